"""A user's own sequences from a NumPy .npz file: train, valid and test splits of one kind.

The file holds the arrays ``train``, ``valid`` and ``test`` and, optionally, ``<split>_lengths``
((N,) integers), e.g. ``np.savez(path, train=..., train_lengths=..., valid=..., test=...)``.
Each split is in one of two layouts:

- padded: (N, T, D), or (N, T) for tokens; sequence i is the first ``lengths[i]`` steps of row
  i (every row is full length T without ``<split>_lengths``); what lies past a length is
  padding and is not checked (it may be NaN or -1);
- concatenated: (sum T, D), or (sum T,) for tokens, with ``<split>_lengths`` required and
  summing to the first dimension: the sequences one after another.

The layout follows from the number of dimensions. The kind follows from the dtype and is the
same in every split, as is D:

- bool -> "binary" (Bernoulli outputs): sequences (T, D) uint8 of 0/1, like music.py's rolls;
- floating -> "real" (Gaussian mixture outputs): sequences (T, D) float32, finite;
- integer -> "tokens" (categorical outputs): sequences (T,) int64, values >= 0. Save 0/1
  features (a piano roll) as bool, not as integers.

Ragged lists of arrays are saved by NumPy as object arrays, which need pickle to load (and
unpickling can run code): they are refused with a message that says how to save instead.
"""
from pathlib import Path

import numpy as np

from ..errors import UserError, describe
from .music import SPLITS

KINDS = ("binary", "real", "tokens")
_SAVE_HINT = ("save each split as one padded array with <split>_lengths, or as the sequences "
              "concatenated (np.concatenate) with <split>_lengths")


def _kind(a: np.ndarray) -> str | None:
    if a.dtype == bool:
        return "binary"
    if np.issubdtype(a.dtype, np.floating):
        return "real"
    if np.issubdtype(a.dtype, np.integer):
        return "tokens"
    return None


def _get(npz, path, key) -> np.ndarray:
    try:
        return npz[key]
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise UserError(f"{path}: {key} is an object array (e.g. a list of sequences of "
                            f"different lengths), which cannot be loaded without pickle; "
                            f"{_SAVE_HINT}") from None
        raise UserError(f"{path}: {key} is not a readable array ({describe(e)})") from None
    except Exception as e:  # zlib.error, EOFError, BadZipFile, ... on a damaged member
        raise UserError(f"{path}: {key} is not a readable array ({describe(e)})") from None


def _lengths(npz, path, key, count) -> np.ndarray:
    L = _get(npz, path, key)
    if L.ndim != 1 or not (np.issubdtype(L.dtype, np.integer) and L.dtype != bool):
        raise UserError(f"{path}: {key} has shape {L.shape} and dtype {L.dtype}, expected (N,) "
                        "integers")
    if count is not None and len(L) != count:
        raise UserError(f"{path}: {key} holds {len(L)} lengths, expected {count} (one per row)")
    if len(L) == 0:
        raise UserError(f"{path}: {key} is empty, expected at least one sequence")
    if (L <= 0).any():
        raise UserError(f"{path}: {key} holds a length of {L.min()}, expected lengths >= 1")
    return L.astype(np.int64)


def _split(npz, path, split) -> tuple[list[np.ndarray], str, int | None]:
    """(sequences, kind, D) of one split; D is None for tokens."""
    a = _get(npz, path, split)
    kind = _kind(a)
    if kind is None:
        raise UserError(f"{path}: {split} has dtype {a.dtype}, expected bool (binary), floating "
                        "(real) or integer (tokens)")
    tokens = kind == "tokens"
    ndim = a.ndim + tokens                  # as if tokens had a feature axis: 3 padded, 2 flat
    if ndim not in (2, 3):
        expected = "(N, T) padded or (sum T,) concatenated token ids" if tokens else \
            "(N, T, D) padded or (sum T, D) concatenated (one feature: D = 1)"
        hint = "; save 0/1 features as bool" if tokens and a.ndim == 3 else ""
        raise UserError(f"{path}: {split} has shape {a.shape} and dtype {a.dtype}, expected "
                        f"{expected}{hint}")
    key = f"{split}_lengths"
    if ndim == 3:                           # padded (N, T[, D])
        N, T = a.shape[:2]
        if N == 0 or T == 0:
            raise UserError(f"{path}: {split} has shape {a.shape}, expected N >= 1 sequences of "
                            "T >= 1 steps")
        L = _lengths(npz, path, key, N) if key in npz.files else np.full(N, T, np.int64)
        if L.max() > T:
            raise UserError(f"{path}: {key} holds a length of {L.max()}, longer than the "
                            f"{T} steps of {split}")
        seqs = [a[i, :n] for i, n in enumerate(L.tolist())]
    else:                                   # concatenated (sum T[, D])
        if key not in npz.files:
            raise UserError(f"{path}: {split} has shape {a.shape}, concatenated sequences, and "
                            f"needs {key} (one length per sequence, summing to {a.shape[0]})")
        L = _lengths(npz, path, key, None)
        if L.sum() != a.shape[0]:
            raise UserError(f"{path}: {key} sums to {L.sum()}, expected {a.shape[0]} (the steps "
                            f"in {split})")
        seqs = np.split(a, np.cumsum(L)[:-1])
    D = None if tokens else a.shape[-1]
    if D == 0:
        raise UserError(f"{path}: {split} has shape {a.shape}, expected D >= 1 features")
    return [_convert(s, kind, path, split) for s in seqs], kind, D


def _convert(s: np.ndarray, kind: str, path, split) -> np.ndarray:
    if kind == "binary":
        return s.astype(np.uint8)
    if kind == "real":
        s = s.astype(np.float32)
        if not np.isfinite(s).all():
            raise UserError(f"{path}: {split} holds NaN or infinite values (or values too large "
                            "for float32) within the sequence lengths")
        return s
    if (s < 0).any():
        raise UserError(f"{path}: {split} holds token id {s.min()}, expected ids >= 0 within "
                        "the sequence lengths")
    if s.dtype == np.uint64 and (s > np.iinfo(np.int64).max).any():
        raise UserError(f"{path}: {split} holds token id {s.max()}, too large for int64")
    return s.astype(np.int64)


def load_npz(path):
    """Sequences from an .npz file (see the module docstring for the layouts).

    Returns (splits, kind): splits {train, valid, test} -> lists of sequences, (T, D) uint8 for
    "binary", (T, D) float32 for "real", (T,) int64 for "tokens"; kind one of KINDS.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        npz = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise UserError(f"{path}: holds pickled data, which is not loaded (unpickling can run "
                            f"code); expected an .npz from np.savez") from None
        raise UserError(f"{path}: not a readable .npz file ({describe(e)})") from None
    except Exception as e:  # OSError, BadZipFile, EOFError, ... on bad bytes
        raise UserError(f"{path}: not a readable .npz file ({describe(e)})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise UserError(f"{path}: holds a single array (.npy), expected an .npz with arrays "
                        f"{', '.join(SPLITS)} (np.savez)")
    with npz:
        keys = set(npz.files)
        missing = [s for s in SPLITS if s not in keys]
        if missing:
            raise UserError(f"{path}: holds {sorted(keys)}, missing {', '.join(missing)}; "
                            f"expected {', '.join(SPLITS)} and optionally <split>_lengths")
        unknown = sorted(keys - set(SPLITS) - {f"{s}_lengths" for s in SPLITS})
        if unknown:
            raise UserError(f"{path}: holds unexpected arrays {unknown}; expected "
                            f"{', '.join(SPLITS)} and optionally <split>_lengths")
        splits, kinds, dims = {}, {}, {}
        for split in SPLITS:
            splits[split], kinds[split], dims[split] = _split(npz, path, split)
    if len(set(kinds.values())) > 1:
        found = ", ".join(f"{s} {k}" for s, k in kinds.items())
        raise UserError(f"{path}: the splits are of different kinds ({found}), expected one dtype "
                        "family (bool, floating or integer) in all")
    if len(set(dims.values())) > 1:
        found = ", ".join(f"{s} {d}" for s, d in dims.items())
        raise UserError(f"{path}: the splits have different feature sizes D ({found}), expected "
                        "the same D in all")
    return splits, kinds["train"]
