"""A user's own text as character sequences: one UTF-8 file, split by position.

The file is decoded as UTF-8 (a leading byte-order mark is dropped; line endings are kept as
they are) and read as Unicode characters. The first 90% of the characters are the training
split, the next 5% validation, the last 5% test (split points n * 90 // 100 and n * 95 // 100).
The vocabulary is UNK followed by the sorted distinct characters of the training split: token 0
is UNK, U+FFFD REPLACEMENT CHARACTER, and stands for every character that the training split
lacks (and for U+FFFD itself, already an unknown character). Each split is cut into chunks of
``chunk_length`` characters, the last shorter chunk kept; a chunk is one (T,) int64 sequence.
"""
from pathlib import Path

import numpy as np

from ..errors import UserError, read_user_file
from .music import SPLITS

UNK = "\ufffd"                  # token 0
DEFAULT_CHUNK_LENGTH = 100      # characters per sequence
SPLIT_AT = (90, 95)             # percent: train below 90, valid below 95, test the rest
MIN_CHARACTERS = 20             # the fewest for which every split gets a character


def load_text(path, chunk_length=DEFAULT_CHUNK_LENGTH, vocab=None):
    """A UTF-8 text file as character tokens.

    Returns (splits, vocab): splits {train, valid, test} -> lists of (T,) int64 sequences, T =
    chunk_length except for each split's last; vocab a list of str with vocab[i] the character
    of token i, vocab[0] = UNK. A ``vocab`` given (a run's) is used as it is.
    """
    if isinstance(chunk_length, bool) or not isinstance(chunk_length, (int, np.integer)) \
            or chunk_length < 1:
        raise UserError(f"chunk_length is {chunk_length!r}, expected a positive integer")
    path = Path(path)
    data = read_user_file(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        at = e.start + len(data) - len(e.object)                   # past a byte-order mark
        raise UserError(f"{path}: not UTF-8 text (byte 0x{data[at]:02x} at offset {at}); save "
                        "the file as UTF-8") from None
    if not text:
        raise UserError(f"{path}: empty, expected UTF-8 text")

    codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)   # (n,) code points
    n = len(codes)
    if n < MIN_CHARACTERS:
        raise UserError(f"{path}: {n} characters, expected at least {MIN_CHARACTERS} (for "
                        "non-empty 90/5/5 train/valid/test parts)")
    a, b = n * SPLIT_AT[0] // 100, n * SPLIT_AT[1] // 100
    parts = dict(zip(SPLITS, (codes[:a], codes[a:b], codes[b:])))

    if vocab is None:
        known = np.unique(parts["train"])                           # sorted code points
        known = known[known != ord(UNK)]
        vocab = [UNK] + [chr(c) for c in known.tolist()]
    else:
        if not (isinstance(vocab, list) and vocab and vocab[0] == UNK
                and all(isinstance(c, str) and len(c) == 1 for c in vocab)):
            raise UserError(f"{path}: the saved vocabulary is not a list of characters after UNK")
        known = np.array(sorted(ord(c) for c in vocab[1:]), np.uint32)
        if [chr(c) for c in known.tolist()] != vocab[1:]:
            raise UserError(f"{path}: the saved vocabulary is not sorted")
    splits = {}
    for split, p in parts.items():
        tokens = np.zeros(len(p), np.int64)                         # (n_split,) UNK
        if len(known):
            i = np.minimum(np.searchsorted(known, p), len(known) - 1)
            found = known[i] == p
            tokens[found] = i[found] + 1
        splits[split] = [tokens[s:s + chunk_length] for s in range(0, len(tokens), chunk_length)]
    return splits, vocab
