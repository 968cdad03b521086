"""Datasets by name. Each gives examples {split: [(inputs (T, I), targets (T, D) or (T,))]} and a
Task that says how to model them.

- music (music.py): jsb, nottingham, musedata, pianomidi: 88-key piano rolls, Bernoulli outputs;
  ``midi:DIR`` (midi.py): a folder of MIDI files made into piano rolls the same way.
- speech (speech.py): fsdd, fsdd-long, wav:DIR: frames of 20 samples in, the next 10 out,
  a mixture of Gaussians; amplitudes normalised with training-split statistics.
- ``npz:FILE`` (arrays.py): a user's own sequences; boolean -> Bernoulli, real -> Gaussian
  mixture (normalised per dimension with training-split statistics), integer tokens ->
  categorical.
- ``text:FILE`` (text.py): a UTF-8 text as characters, categorical outputs, NLL also in bits
  per character.
Inputs are x_{t-1} (zeros at t = 0) for everything but speech; tokens are fed one-hot (the input
projection of a one-hot token is a learned embedding, one per gate block, with no extra layer).
fetch.py downloads the paper's datasets into a checksummed cache; batching.py makes padded
minibatches.
"""
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from .batching import music_examples, shifted_examples, token_examples
from .music import KEYS, LOWEST_NOTE, load_music
from .sources import MUSIC
from .speech import (FRAME, PREDICT, Normalization, fit_normalization, iid_gaussian_nll,
                     load_speech, speech_examples)

SPEECH = ("fsdd", "fsdd-long")
PREFIXES = ("wav:", "midi:", "npz:", "text:")   # a dataset named by a path


@dataclass(frozen=True)
class Task:
    kind: str                      # music | speech | binary | real | tokens (Table 1 sizes:
                                   # speech, else music)
    input_size: int
    output_size: int
    head: str                      # heads.HEADS: the default output distribution
    samples_per_step: int = 0      # speech: NLL is also reported per predicted sample
    characters: bool = False       # text: NLL is also reported in bits per character


MUSIC_TASK = Task("music", KEYS, KEYS, "bernoulli")
SPEECH_TASK = Task("speech", FRAME, PREDICT, "gmm", samples_per_step=PREDICT)


@dataclass
class Data:
    examples: dict                 # {split: [(inputs, targets)]}
    task: Task
    info: dict = field(default_factory=dict)          # what reading it again the same way needs:
                                                      # normalisation, vocabulary, file digest
    baseline: dict = field(default_factory=dict)      # speech: i.i.d. Gaussian NLL per sample


def dataset_names():
    return [*MUSIC, *SPEECH, *(p + ("DIR" if p in ("wav:", "midi:") else "FILE") for p in PREFIXES)]


def task_of(name) -> Task:
    """The Task of dataset ``name`` where it is known without reading the data (the paper's
    datasets, wav:, midi:), else that of a typical file of its kind; a UserError names the
    valid datasets."""
    if name in MUSIC or _prefixed(name, "midi:"):
        return MUSIC_TASK
    if name in SPEECH or _prefixed(name, "wav:"):
        return SPEECH_TASK
    if _prefixed(name, "npz:") or _prefixed(name, "text:"):
        return Task("tokens", 1, 1, "categorical")     # sizes come from the file (load_data)
    raise UserError(f"unknown dataset {name!r}; expected one of {', '.join(dataset_names())}")


def _prefixed(name, prefix):
    return isinstance(name, str) and name.startswith(prefix) and len(name) > len(prefix)


def load_data(name, data_dir=None, info=None, sample_rate=8000, steps_per_quarter=2,
              log=print) -> Data:
    """Dataset ``name`` as model-ready examples. ``info`` is a run's saved data info
    (normalisation, vocabulary, digest): given, the data is read exactly as that run read it,
    and data that differs from the run's (its digest) is a UserError; without it, statistics
    come from the training split."""
    task_of(name)
    info = info or {}
    if name in MUSIC:
        return Data({s: music_examples(v) for s, v in load_music(name, data_dir).items()}, MUSIC_TASK)
    if name.startswith("midi:"):
        from .midi import load_midi_dir
        rolls, midi = load_midi_dir(name[5:], steps_per_quarter, log=log)
        _check_same(info.get("midi", {}).get("digest"), midi["digest"], name, "MIDI files")
        return Data({s: music_examples(v) for s, v in rolls.items()}, MUSIC_TASK, {"midi": midi})
    if name.startswith("npz:"):
        return _npz(name[4:], info)
    if name.startswith("text:"):
        return _text(name[5:], info)
    waves = load_speech(name, data_dir, sample_rate)
    saved = info.get("normalization")
    norm = Normalization(**saved) if saved else fit_normalization(waves["train"])
    examples = {s: speech_examples(v, norm) for s, v in waves.items()}
    baseline = {s: iid_gaussian_nll(examples["train"], ex) for s, ex in examples.items()}
    return Data(examples, SPEECH_TASK, {"normalization": norm.to_dict()}, baseline)


def _check_same(saved, now, name, what):
    if saved is not None and saved != now:
        raise UserError(f"{name}: the {what} differ from the run's (digest {saved[:12]} saved, "
                        f"{now[:12]} now)")


def _file_digest(name, path, info):
    """sha256 of the file's bytes, checked against the run's (``info``) where it has one."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    _check_same(info.get("digest"), digest, name, "file's contents")
    return digest


def _check_one_hot(name, splits, V, why):
    """A UserError, before any allocation, where the one-hot inputs of every split (float32,
    held twice: the examples and their padded batches) would not fit in this machine's memory."""
    need = 2 * 4 * V * sum(len(s) for v in splits.values() for s in v)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > memory:
        raise UserError(f"{name}: {why}: the one-hot inputs ({V:,} wide) need about "
                        f"{need / 2**30:,.0f} GiB, more than this machine's "
                        f"{memory / 2**30:.0f} GiB of memory")


def _npz(path, info):
    from .arrays import load_npz
    splits, kind = load_npz(path)
    digest = _file_digest(f"npz:{path}", path, info)
    if kind == "binary":
        D = splits["train"][0].shape[1]
        return Data({s: music_examples(v) for s, v in splits.items()},
                    Task("binary", D, D, "bernoulli"), {"digest": digest})
    if kind == "tokens":
        V = int(info.get("vocabulary_size") or 1 + max(int(s.max()) for v in splits.values()
                                                          for s in v if len(s)))
        _check_one_hot(f"npz:{path}", splits, V, f"token ids up to {V - 1:,}; number the tokens "
                       "0..V-1 without gaps")
        return Data({s: token_examples(v, V) for s, v in splits.items()},
                    Task("tokens", V, V, "categorical"), {"vocabulary_size": V, "digest": digest})
    D = splits["train"][0].shape[1]
    if "normalization" in info:
        mean, std = (np.asarray(info["normalization"][k], np.float64) for k in ("mean", "std"))
    else:
        train = np.concatenate(splits["train"]).astype(np.float64)
        mean, std = train.mean(0), train.std(0)
        std = np.where(std > 0, std, 1.0)              # a constant dimension is left as it is
    examples = {s: shifted_examples([((x - mean) / std).astype(np.float32) for x in v])
                for s, v in splits.items()}
    return Data(examples, Task("real", D, D, "gmm"),
                {"normalization": {"mean": mean.tolist(), "std": std.tolist()}, "digest": digest})


def _text(path, info):
    from .text import load_text
    splits, vocab = load_text(path, vocab=info.get("vocab"))
    digest = _file_digest(f"text:{path}", path, info)
    V = len(vocab)
    _check_one_hot(f"text:{path}", splits, V, f"{V - 1:,} distinct characters")
    return Data({s: token_examples(v, V) for s, v in splits.items()},
                Task("tokens", V, V, "categorical", characters=True),
                {"vocab": vocab, "digest": digest})


__all__ = ["KEYS", "LOWEST_NOTE", "MUSIC", "SPEECH", "Data", "Task", "dataset_names", "load_data",
           "load_music", "task_of"]
