"""Standard MIDI files as piano rolls: a user's own music, read the way music.py's datasets are.

A piano roll is a (T, 88) uint8 array of 0/1, column j = MIDI note 21 + j (A0..C8), as in
music.py. Time is quantised by beats, not seconds: a step is 1/steps_per_quarter of a quarter
note, measured with the file's ticks_per_beat, so tempo changes do not move notes between steps.

Reading (``read_midi``): all tracks are merged in time order; the drum channel (MIDI channel 10,
mido channel 9) and notes outside MIDI 21..108 are dropped; a note_on with velocity 0 is a
note_off. A note_off ends the oldest sounding note of that pitch and channel (first in, first
out), and a note still sounding at the end of the file ends there. A note sounding over ticks
[onset, offset) marks steps [round(onset), round(offset)) with both ends rounded to the nearest
step boundary (performed MIDI is a few ticks early or late), and at least the one step at its
rounded onset when it is shorter than that. The roll is T = max(last note's end step, the
file's end rounded to a step) steps long, the file's end being the time of its last message
(its end_of_track): silence before the first note and after the last one is kept.

Writing (``write_midi``): one track; each run of consecutive 1s in a column is one note, from
its first step to the step after its last; the end_of_track is put at step T, so trailing
silent steps survive the round trip: ``read_midi(write_midi(roll))`` equals ``roll`` for
every (T, 88) 0/1 roll, silent rolls included. (A roll cannot tell a held note from the same
note repeated without a gap; a silent step between them is what separates two notes.)

``load_midi_dir(root)`` reads every .mid/.midi file under a directory into train, valid and test
splits chosen by a seeded hash of each file's relative path.
"""
import hashlib
import io
from pathlib import Path

import mido
import numpy as np

from ..errors import UserError, describe, read_user_file
from ..rundir import write_bytes
from .music import KEYS, LOWEST_NOTE, SPLITS

DEFAULT_STEPS_PER_QUARTER = 2   # eighth notes: Boulanger-Lewandowski et al. (2012)
DRUM_CHANNEL = 9                # MIDI channel 10, counted from 0 as mido does
MAX_STEPS = 1_000_000           # a longer roll (88 MB) is taken for a corrupt file
SUFFIXES = (".mid", ".midi")
SPLIT_AT = (0.8, 0.9)           # hash in [0, 0.8): train, [0.8, 0.9): valid, [0.9, 1): test


def _check_steps_per_quarter(steps_per_quarter) -> int:
    if isinstance(steps_per_quarter, bool) or not isinstance(steps_per_quarter, (int, np.integer)) \
            or not 1 <= steps_per_quarter <= 32767:
        raise UserError(f"steps_per_quarter is {steps_per_quarter!r}, expected an integer from 1 "
                        "to 32767 (2: eighth notes, 4: sixteenth notes)")
    return int(steps_per_quarter)


def _read_file(path) -> mido.MidiFile:
    path = Path(path)
    data = read_user_file(path)
    try:
        midi = mido.MidiFile(file=io.BytesIO(data))
    except Exception as e:  # mido raises OSError, EOFError, ValueError, KeyError, ... on bad bytes
        raise UserError(f"{path}: not a readable MIDI file ({describe(e)})") from None
    if midi.type not in (0, 1):
        raise UserError(f"{path}: MIDI file type {midi.type}, expected type 0 or 1 "
                        "(type 2 holds independent sequences, not one piece)")
    if midi.ticks_per_beat <= 0:
        raise UserError(f"{path}: time division {midi.ticks_per_beat}, expected ticks per "
                        "quarter note (SMPTE frame timing is not supported)")
    return midi


def read_midi(path, steps_per_quarter=DEFAULT_STEPS_PER_QUARTER) -> np.ndarray:
    """A Standard MIDI file as a (T, 88) uint8 piano roll of ``steps_per_quarter`` steps per
    quarter note (see the module docstring for how notes become steps).

    The default, 2 (eighth notes), is the resolution at which Boulanger-Lewandowski, Bengio and
    Vincent (ICML 2012) document Nottingham, MuseData and Piano-midi.de, the paper's piano-roll
    sets; JSB Chorales is at quarter notes (steps_per_quarter=1).

    A file without notes gives an all-zero roll (T may be 0); ``load_midi_dir`` skips such files.
    """
    spq = _check_steps_per_quarter(steps_per_quarter)
    midi = _read_file(path)
    tpb = midi.ticks_per_beat

    def step(tick):             # nearest step boundary, halves rounded up, in exact integers
        return (2 * tick * spq + tpb) // (2 * tpb)

    events, end = [], 0         # (tick, message) of every track, in time then file order
    for track in midi.tracks:
        tick = 0
        for msg in track:
            tick += msg.time
            if msg.type in ("note_on", "note_off"):
                events.append((tick, msg))
        end = max(end, tick)
    events.sort(key=lambda e: e[0])  # stable: ties keep track order, then order within a track

    sounding = {}               # (channel, note) -> onset ticks, oldest first
    notes = []                  # (onset step, end step, column)
    for tick, msg in events:
        if msg.channel == DRUM_CHANNEL or not LOWEST_NOTE <= msg.note < LOWEST_NOTE + KEYS:
            continue
        key = (msg.channel, msg.note)
        if msg.type == "note_on" and msg.velocity > 0:
            sounding.setdefault(key, []).append(tick)
        elif sounding.get(key):             # a note_off without a sounding note is ignored
            notes.append((step(sounding[key].pop(0)), step(tick), msg.note - LOWEST_NOTE))
    for (_, note), onsets in sounding.items():
        notes += [(step(onset), step(end), note - LOWEST_NOTE) for onset in onsets]

    notes = [(a, max(b, a + 1), j) for a, b, j in notes]
    T = max([step(end)] + [b for _, b, _ in notes])
    if T > MAX_STEPS:
        raise UserError(f"{path}: lasts {T} steps at {spq} per quarter note, expected at most "
                        f"{MAX_STEPS}")
    roll = np.zeros((T, KEYS), np.uint8)    # (T, 88)
    for a, b, j in notes:
        roll[a:b, j] = 1
    return roll


def _check_roll(roll) -> np.ndarray:
    a = np.asarray(roll)
    if a.ndim != 2 or a.shape[1] != KEYS or not (a.dtype == bool or np.issubdtype(a.dtype, np.number)):
        raise UserError(f"a piano roll to write has shape {a.shape} and dtype {a.dtype}, "
                        f"expected a (T, {KEYS}) array of 0/1")
    if not ((a == 0) | (a == 1)).all():
        raise UserError("a piano roll to write holds values other than 0 and 1")
    return a.astype(np.uint8)


def write_midi(roll, path, steps_per_quarter=DEFAULT_STEPS_PER_QUARTER, tempo_bpm=120, velocity=80):
    """Write a (T, 88) 0/1 piano roll as a type 0 MIDI file at ``path`` (atomically); returns
    ``path``. Each run of 1s in a column is one note; the end_of_track sits at step T."""
    spq = _check_steps_per_quarter(steps_per_quarter)
    roll = _check_roll(roll)
    if isinstance(velocity, bool) or not isinstance(velocity, (int, np.integer)) or not 1 <= velocity <= 127:
        raise UserError(f"velocity is {velocity!r}, expected an integer from 1 to 127")
    try:
        tempo = mido.bpm2tempo(float(tempo_bpm))
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        tempo = -1
    if not 0 < tempo <= 0xFFFFFF:
        raise UserError(f"tempo_bpm is {tempo_bpm!r}, expected a number of quarter notes per "
                        "minute from 4 to 60,000,000")
    ticks = max(1, 480 // spq)              # per step; ticks_per_beat = ticks * spq < 2**15

    T = len(roll)
    edges = np.diff(np.pad(roll.astype(np.int8), ((1, 1), (0, 0))), axis=0)  # (T + 1, 88)
    events = []                             # (step, 0 off / 1 on, column)
    for t, j in zip(*np.nonzero(edges)):
        events.append((int(t), int(edges[t, j] > 0), int(j)))
    events.sort()                           # at one step, note_offs before note_ons

    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=tempo, time=0)])
    now = 0
    for t, on, j in events:
        kind = "note_on" if on else "note_off"
        track.append(mido.Message(kind, note=LOWEST_NOTE + j, velocity=velocity if on else 0,
                                  time=t * ticks - now))
        now = t * ticks
    track.append(mido.MetaMessage("end_of_track", time=T * ticks - now))
    midi = mido.MidiFile(type=0, ticks_per_beat=ticks * spq, tracks=[track])
    buffer = io.BytesIO()
    midi.save(file=buffer)
    path = Path(path)
    try:
        write_bytes(path, buffer.getvalue())
    except OSError as e:
        raise UserError(f"{path}: cannot write ({describe(e)})") from None
    return path


def _split_of(relpath: str, seed) -> str:
    """train, valid or test from sha256("seed:relpath") read as a number in [0, 1)."""
    u = int.from_bytes(hashlib.sha256(f"{seed}:{relpath}".encode()).digest()[:8], "big") / 2 ** 64
    return "train" if u < SPLIT_AT[0] else "valid" if u < SPLIT_AT[1] else "test"


def load_midi_dir(root, steps_per_quarter=DEFAULT_STEPS_PER_QUARTER, seed=0, log=print):
    """Every .mid/.midi file under ``root`` (recursive, suffix in any case) as piano rolls.

    Returns (splits, info): splits {train, valid, test} -> lists of (T, 88) uint8 rolls, each
    split in the order of the files' relative paths; info {"files", "skipped", "sizes",
    "steps_per_quarter", "seed", "digest"}, digest being the sha256 of the used files'
    relative paths (sorted, one per line). A file goes to train if sha256(f"{seed}:{relpath}")
    read as a fraction is below 0.8, to valid below 0.9, else to test: adding or removing a file
    moves no other file. Unreadable files and files without notes are skipped with one line
    each through ``log``.
    """
    spq = _check_steps_per_quarter(steps_per_quarter)
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: not a directory; expected a directory of MIDI files "
                        "(.mid or .midi)")
    paths = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*")
                   if p.suffix.lower() in SUFFIXES and p.is_file())
    splits = {s: [] for s in SPLITS}
    used, skipped = [], 0
    for rel, path in paths:
        try:
            roll = read_midi(path, spq)
        except UserError as e:
            log(f"skipping {e}")
            skipped += 1
            continue
        if not roll.any():
            log(f"skipping {path}: no notes (after dropping drums and notes outside MIDI "
                f"{LOWEST_NOTE}..{LOWEST_NOTE + KEYS - 1})")
            skipped += 1
            continue
        splits[_split_of(rel, seed)].append(roll)
        used.append(rel)
    if len(used) < 3:
        raise UserError(f"{root}: {len(used)} usable MIDI files ({skipped} skipped), expected at "
                        "least 3 (one each for training, validation and test)")
    sizes = {s: len(v) for s, v in splits.items()}
    empty = [s for s in SPLITS if not sizes[s]]
    if empty:
        raise UserError(f"{root}: the split by hash of the file names (seed {seed}) gives "
                        f"{'/'.join(str(sizes[s]) for s in SPLITS)} train/valid/test files; add "
                        "files or try another seed")
    digest = hashlib.sha256("".join(rel + "\n" for rel in used).encode()).hexdigest()
    info = {"files": len(used), "skipped": skipped, "sizes": sizes, "steps_per_quarter": spq,
            "seed": seed, "digest": digest}
    return splits, info
