"""Datasets: polyphonic piano rolls (music.py) and their checksummed download cache (fetch.py)."""
from .music import KEYS, LOWEST_NOTE, MUSIC, load_music

__all__ = ["KEYS", "LOWEST_NOTE", "MUSIC", "load_music"]
