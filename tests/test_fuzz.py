"""Fuzzing the file readers: random and mutated bytes (truncations, bit flips, overwritten and
inserted runs, random bytes) of .mat, pickle and WAV files must load, or end in a UserError,
quickly and without running anything. Nothing else: no other exception, no hang.

Profiles: "ci" (default) runs 150 examples per target; the offline campaign is
    HYPOTHESIS_PROFILE=campaign python3 -m pytest -q tests/test_fuzz.py   (3000 per target)
"""
import io
import os
import pickle
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.signal  # noqa: F401  imported now, not inside the first timed read_wav
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatedrnn.data.music import read_mat, read_pickle
from gatedrnn.data.speech import read_wav
from gatedrnn.errors import UserError

COMMON = dict(deadline=None, derandomize=False, suppress_health_check=[HealthCheck.too_slow],
              database=None)
settings.register_profile("ci", max_examples=150, **COMMON)
settings.register_profile("campaign", max_examples=3000, **COMMON)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
SECONDS = 20.0      # one read of a few-KB file takes milliseconds; generous for a loaded machine
_WORK = tempfile.TemporaryDirectory(prefix="gatedrnn-fuzz-")   # removed at exit
WORK = Path(_WORK.name)


def seed_mat(compress):
    rng = np.random.default_rng(0)
    out = {}
    for split, n in (("train", 3), ("valid", 2), ("test", 2)):
        cells = np.empty((1, n), dtype=object)
        for i in range(n):
            cells[0, i] = (rng.random((int(rng.integers(1, 6)), 88)) < 0.1).astype(np.uint8)
        out[split + "data"] = cells
    buf = io.BytesIO()
    scipy.io.savemat(buf, out, do_compression=compress)
    return buf.getvalue()


def seed_pickle(protocol):
    return pickle.dumps({"train": [[[60, 64], [], [21, 108]]], "valid": [[[22], [50]]],
                         "test": [[[70]]]}, protocol=protocol)


def seed_wav(width):
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(width), w.setframerate(8000)
        w.writeframes(np.random.default_rng(0).integers(0, 255, 60 * width, dtype=np.uint8).tobytes())
    return buf.getvalue()


SEEDS = {
    "mat": [seed_mat(False), seed_mat(True)],
    "pickle": [seed_pickle(0), seed_pickle(2), seed_pickle(4)],
    "wav": [seed_wav(1), seed_wav(2), seed_wav(3)],
}
READERS = {"mat": read_mat, "pickle": read_pickle, "wav": read_wav}


@st.composite
def mutated(draw, seeds):
    """A seed file with a few mutations, or plain random bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=600))
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "delete"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "truncate":
            del data[i:]
        elif kind == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[i:i + len(chunk)] = chunk
        elif kind == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[i:i + draw(st.integers(1, 16))]
    return bytes(data)


def loads_or_user_error(kind, data):
    path = WORK / f"fuzz-{os.getpid()}.{kind}"
    marker = WORK / "pwned"
    path.write_bytes(data)
    start = time.monotonic()
    try:
        READERS[kind](path)
    except UserError as e:
        assert "\n" not in str(e) and str(path) in str(e)
    assert time.monotonic() - start < SECONDS
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["mat", "pickle", "wav"])
def test_seeds_load(kind):
    for data in SEEDS[kind]:
        path = WORK / f"seed.{kind}"
        path.write_bytes(data)
        READERS[kind](path)                       # the unmutated seeds are valid files


@pytest.mark.parametrize("kind", ["mat", "pickle", "wav"])
def test_fuzzed_files_load_or_raise_user_error(kind):
    @settings(PROFILE)
    @given(data=mutated(SEEDS[kind]))
    def check(data):
        loads_or_user_error(kind, data)
    check()
