"""Shared fixtures. Data: the files in shared/data ($GATEDRNN_SHARED_DATA, else <repo>/../shared/data)."""
import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)   # as the CLI does: faster for these tiny models on a few cores

# Subprocesses started by the tests from another directory import the same code as the tests
# (PYTHONPATH=src, as relative, would otherwise point elsewhere there).
if os.environ.get("PYTHONPATH"):
    os.environ["PYTHONPATH"] = os.pathsep.join(
        str(Path(p).resolve()) for p in os.environ["PYTHONPATH"].split(os.pathsep) if p)

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("GATEDRNN_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")
# CLI subprocesses import the gatedrnn these tests import, from any working directory
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(Path(__import__("gatedrnn").__file__).resolve().parent.parent),
     *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])


@pytest.fixture(scope="session")
def polyphonic_dir() -> Path:
    """shared/data/polyphonic with the four .mat files; the test is skipped where it is absent."""
    folder = SHARED_DATA / "polyphonic"
    if not folder.is_dir():
        pytest.skip(f"polyphonic music data not found in {folder} (set GATEDRNN_SHARED_DATA)")
    return folder


@pytest.fixture(scope="session")
def fsdd_dir() -> Path:
    """shared/data/speech/free-spoken-digit-dataset (holding recordings/); skipped where absent."""
    folder = SHARED_DATA / "speech" / "free-spoken-digit-dataset"
    if not (folder / "recordings").is_dir():
        pytest.skip(f"FSDD not found in {folder} (set GATEDRNN_SHARED_DATA)")
    return folder
