"""Datasets by name. Each gives examples {split: [(inputs (T, I), targets (T, D))]} and a Task
that says how to model them.

- music (music.py): jsb, nottingham, musedata, pianomidi: 88-key piano rolls, Bernoulli outputs.
- speech (speech.py): fsdd, fsdd-long, wav:DIR: frames of 20 samples in, the next 10 out,
  a mixture of Gaussians; amplitudes normalised with training-split statistics.
fetch.py downloads into a checksummed cache; batching.py makes padded minibatches.
"""
from dataclasses import dataclass, field

from ..errors import UserError
from .batching import music_examples
from .music import KEYS, LOWEST_NOTE, MUSIC, load_music
from .speech import (FRAME, PREDICT, Normalization, fit_normalization, iid_gaussian_nll,
                     load_speech, speech_examples)

SPEECH = ("fsdd", "fsdd-long")


@dataclass(frozen=True)
class Task:
    kind: str                      # Table 1 size group: "music" | "speech"
    input_size: int
    output_size: int
    head: str                      # heads.HEADS
    samples_per_step: int = 0      # speech: NLL is also reported per predicted sample


MUSIC_TASK = Task("music", KEYS, KEYS, "bernoulli")
SPEECH_TASK = Task("speech", FRAME, PREDICT, "gmm", samples_per_step=PREDICT)


@dataclass
class Data:
    examples: dict                 # {split: [(inputs, targets)]}
    task: Task
    normalization: dict | None = None                 # speech: training-split mean and std
    baseline: dict = field(default_factory=dict)      # speech: i.i.d. Gaussian NLL per sample


def dataset_names():
    return [*MUSIC, *SPEECH, "wav:DIR"]


def task_of(name) -> Task:
    """The Task of dataset ``name``; a UserError names the valid datasets."""
    if name in MUSIC:
        return MUSIC_TASK
    if name in SPEECH or (isinstance(name, str) and name.startswith("wav:") and len(name) > 4):
        return SPEECH_TASK
    raise UserError(f"unknown dataset {name!r}; expected one of {', '.join(dataset_names())}")


def load_data(name, data_dir=None, normalization=None, sample_rate=8000) -> Data:
    """Dataset ``name`` as model-ready examples. Speech amplitudes are normalised with
    ``normalization`` ({"mean", "std"}, as saved in a run) or, if None, the training split's."""
    task = task_of(name)
    if task is MUSIC_TASK:
        return Data({s: music_examples(v) for s, v in load_music(name, data_dir).items()}, task)
    waves = load_speech(name, data_dir, sample_rate)
    norm = Normalization(**normalization) if normalization else fit_normalization(waves["train"])
    examples = {s: speech_examples(v, norm) for s, v in waves.items()}
    baseline = {s: iid_gaussian_nll(examples["train"], ex) for s, ex in examples.items()}
    return Data(examples, task, norm.to_dict(), baseline)


def load_examples(name, data_dir=None):
    """{split: [(inputs, targets)]} for dataset ``name``."""
    return load_data(name, data_dir).examples


__all__ = ["KEYS", "LOWEST_NOTE", "MUSIC", "SPEECH", "Data", "Task", "dataset_names", "load_data",
           "load_examples", "load_music", "task_of"]
