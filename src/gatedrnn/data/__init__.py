"""Datasets by name. Each gives examples {split: [(inputs (T, I), targets (T, D))]} and a Task
that says how to model them. Music: polyphonic piano rolls (music.py), downloaded into a
checksummed cache (fetch.py); batching.py turns examples into padded minibatches."""
from dataclasses import dataclass

from ..errors import UserError
from .batching import music_examples
from .music import KEYS, LOWEST_NOTE, MUSIC, load_music


@dataclass(frozen=True)
class Task:
    kind: str          # Table 1 size group: "music" | "speech"
    input_size: int
    output_size: int
    head: str          # heads.HEADS


MUSIC_TASK = Task("music", KEYS, KEYS, "bernoulli")


def dataset_names():
    return list(MUSIC)


def task_of(name) -> Task:
    """The Task of dataset ``name``; a UserError names the valid datasets."""
    if name in MUSIC:
        return MUSIC_TASK
    raise UserError(f"unknown dataset {name!r}; expected one of {', '.join(dataset_names())}")


def load_examples(name, data_dir=None):
    """{split: [(inputs, targets)]} for dataset ``name`` (data_dir: see music.load_music)."""
    task_of(name)
    return {split: music_examples(seqs) for split, seqs in load_music(name, data_dir).items()}


__all__ = ["KEYS", "LOWEST_NOTE", "MUSIC", "Task", "dataset_names", "load_examples", "load_music",
           "task_of"]
