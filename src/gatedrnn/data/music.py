"""The four polyphonic piano-roll datasets of Boulanger-Lewandowski, Bengio and Vincent (ICML 2012).

A dataset is a dict of splits ``{"train", "valid", "test"}``; a split is a list of sequences; a
sequence is a (T, 88) uint8 piano roll of 0/1 where column j is MIDI note 21 + j (A0..C8) and an
all-zero row is a silent step. Two file formats give the same thing:

- ``.mat``: the MATLAB conversion of Gan et al. (NIPS 2015), keys traindata/validdata/testdata,
  each a 1 x N cell array of T x 88 uint8 matrices (the files in shared/data/polyphonic). Read
  by matfile.py, a strict reader of this MAT v5 subset (scipy.io.loadmat is not safe on
  corrupt or hostile bytes);
- ``.pickle``: the original Python 2 cPickle, a dict of lists of sequences, each a list of time
  steps, each a list of MIDI note numbers. Loaded with a restricted unpickler that builds only
  plain containers and numbers, since unpickling can otherwise run code.

``load_music(name)`` finds the file (``data_dir``, ``$GATEDRNN_DATA_DIR``, or the download cache),
reads it and checks it against the published split sizes.
"""
import io
import os
import pickle
import reprlib
from pathlib import Path

import numpy as np

from ..errors import UserError, describe
from . import matfile
from .fetch import fetch_music
from .sources import music_spec

LOWEST_NOTE = 21  # MIDI A0: column 0 of a piano roll
KEYS = 88         # MIDI 21..108
SPLITS = ("train", "valid", "test")


def _a(x) -> str:
    """'a str', 'an int': the type of x for an error message."""
    name = type(x).__name__
    return ("an " if name[0] in "aeiou" else "a ") + name


def _roll(a, path, where: str) -> np.ndarray:
    """Check that `a` is a non-empty (T, 88) array of 0/1 and return it as uint8."""
    if not isinstance(a, np.ndarray) or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise UserError(f"{path}: {where} holds {_a(a)}, expected a T x {KEYS} array of 0/1")
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] != KEYS:
        raise UserError(f"{path}: {where} has shape {a.shape}, expected (T, {KEYS}) with T > 0")
    if not ((a == 0) | (a == 1)).all():
        raise UserError(f"{path}: {where} holds values other than 0 and 1")
    return a.astype(np.uint8, copy=False)


def _require_file(path) -> None:
    if not Path(path).is_file():
        raise UserError(f"{path}: no such file")


def validate(splits, path, expected_sizes=None) -> None:
    """Raise UserError unless `splits` is {train, valid, test} -> non-empty lists of (T, 88) 0/1
    arrays, with sequence counts equal to `expected_sizes` (train, valid, test) when given."""
    if not isinstance(splits, dict) or set(splits) != set(SPLITS):
        found = sorted(map(str, splits)) if isinstance(splits, dict) else type(splits).__name__
        raise UserError(f"{path}: found splits {found}, expected {', '.join(SPLITS)}")
    for split in SPLITS:
        seqs = splits[split]
        if not isinstance(seqs, list) or not seqs:
            raise UserError(f"{path}: split {split} is empty or not a list of sequences")
        for i, a in enumerate(seqs):
            _roll(a, path, f"{split}[{i}]")
    if expected_sizes is not None:
        found = tuple(len(splits[s]) for s in SPLITS)
        if found != tuple(expected_sizes):
            raise UserError(f"{path}: found {'/'.join(map(str, found))} train/valid/test sequences, "
                            f"expected {'/'.join(map(str, expected_sizes))}")


def read_mat(path) -> dict[str, list[np.ndarray]]:
    """Read a Gan et al. .mat file: {train, valid, test} -> lists of (T, 88) uint8 rolls."""
    _require_file(path)
    try:
        mat = matfile.read(path)
    except (matfile.MatError, OSError) as e:
        raise UserError(f"{path}: not a readable MATLAB .mat file ({describe(e)})") from None
    splits = {}
    for split in SPLITS:
        key = split + "data"
        cells = mat.get(key)
        if not isinstance(cells, np.ndarray) or cells.dtype != object or cells.ndim != 2 or cells.shape[0] != 1:
            found = "nothing" if cells is None else f"a {getattr(cells, 'shape', type(cells).__name__)} array"
            raise UserError(f"{path}: {key} holds {found}, expected a 1 x N cell array of T x {KEYS} matrices")
        splits[split] = [_roll(a, path, f"{split}[{i}]") for i, a in enumerate(cells[0])]
    return splits


class _PlainUnpickler(pickle._Unpickler):
    """Builds dicts, lists, tuples, strings and numbers; refuses every global (class, function).

    The pure-Python unpickler, not the C one: the C unpickler sizes its memo table from the
    index in the file (a 4-byte LONG_BINPUT index makes it allocate gigabytes); this one keeps
    the memo in a dict. Every opcode that could import or call (GLOBAL, STACK_GLOBAL, INST,
    OBJ, REDUCE, NEWOBJ, EXT1/2/4) goes through find_class, which refuses; persistent ids and
    out-of-band buffers are refused by the unpickler itself."""

    def __init__(self, file, path):
        super().__init__(file, encoding="latin1")  # Python 2 cPickle str -> str
        self.path = path

    def find_class(self, module, name):
        raise UserError(f"{self.path}: refusing to load {module}.{name}; a data pickle may hold only "
                        "lists, tuples, dicts and numbers")


def _note(x, path, where: str) -> int:
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    if type(x) is not int:  # bool is an int subclass, and not a note
        raise UserError(f"{path}: {where} holds {_a(x)}, expected MIDI note numbers")
    if not LOWEST_NOTE <= x < LOWEST_NOTE + KEYS:
        raise UserError(f"{path}: {where} holds note {x}, outside MIDI {LOWEST_NOTE}..{LOWEST_NOTE + KEYS - 1}")
    return x


def _notes_to_roll(seq, path, where: str) -> np.ndarray:
    """List of T time steps (each a list of MIDI notes; empty = silence) -> (T, 88) uint8."""
    if not isinstance(seq, (list, tuple)):
        raise UserError(f"{path}: {where} is {_a(seq)}, expected a list of time steps")
    roll = np.zeros((len(seq), KEYS), np.uint8)  # (T, 88)
    for t, step in enumerate(seq):
        if not isinstance(step, (list, tuple)):
            raise UserError(f"{path}: {where}[{t}] is {_a(step)}, "
                            "expected a list of MIDI note numbers")
        for x in step:
            roll[t, _note(x, path, f"{where}[{t}]") - LOWEST_NOTE] = 1
    return roll


def read_pickle(path) -> dict[str, list[np.ndarray]]:
    """Read an original ICML 2012 pickle: {train, valid, test} -> lists of (T, 88) uint8 rolls."""
    _require_file(path)
    try:
        # from memory: a declared length can then never exceed the bytes really there
        data = _PlainUnpickler(io.BytesIO(Path(path).read_bytes()), path).load()
    except UserError:
        raise
    except Exception as e:  # UnpicklingError, EOFError, ValueError, ... on bad bytes
        raise UserError(f"{path}: not a readable pickle ({describe(e)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: holds {_a(data)}, expected a dict with keys {', '.join(SPLITS)}")
    data = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in data.items()}
    if set(data) != set(SPLITS):
        keys = "[" + ", ".join(sorted(map(reprlib.repr, data))) + "]"
        raise UserError(f"{path}: holds keys {keys}, expected {', '.join(SPLITS)}")
    splits = {}
    for split in SPLITS:
        seqs = data[split]
        if not isinstance(seqs, (list, tuple)):
            raise UserError(f"{path}: {split} is {_a(seqs)}, expected a list of sequences")
        splits[split] = [_notes_to_roll(seq, path, f"{split}[{i}]") for i, seq in enumerate(seqs)]
    return splits


def _directory(value, source: str) -> Path:
    d = Path(value).expanduser()
    if not d.is_dir():
        raise UserError(f"{source} {value} is not a directory; expected the directory holding the "
                        "dataset files (e.g. JSB_Chorales.mat)")
    return d


def load_music(name: str, data_dir=None) -> dict[str, list[np.ndarray]]:
    """Dataset `name` (a key of MUSIC) as {train, valid, test} -> lists of (T, 88) uint8 rolls.

    Looks in `data_dir`, else $GATEDRNN_DATA_DIR, else the download cache (fetching the pinned
    .mat on first use). In a directory the .mat is used if present, else the original .pickle;
    local copies are checked for structure and split sizes, not for their sha256.
    """
    spec = music_spec(name)
    if data_dir is not None:
        folder = _directory(data_dir, "data_dir")
    elif os.environ.get("GATEDRNN_DATA_DIR"):
        folder = _directory(os.environ["GATEDRNN_DATA_DIR"], "GATEDRNN_DATA_DIR")
    else:
        folder = None
    if folder is None:
        path = fetch_music(name)
    elif (folder / spec.mat_file).is_file():
        path = folder / spec.mat_file
    elif (folder / spec.pickle_file).is_file():
        path = folder / spec.pickle_file
    else:
        raise UserError(f"{folder} holds neither {spec.mat_file} nor {spec.pickle_file} ({spec.title})")
    splits = read_mat(path) if path.suffix == ".mat" else read_pickle(path)
    validate(splits, path, spec.sizes)
    return splits
