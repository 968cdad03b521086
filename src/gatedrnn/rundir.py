"""A run directory on disk: config.json, metrics.json, curves.csv, model.safetensors, and
checkpoint.safetensors (everything needed to resume after the last completed epoch).

Every file is written to a temporary name in the same directory, flushed, fsynced and renamed
into place (then the directory is fsynced), so a reader never sees a half-written file, not
even after a crash. Models and checkpoints are safetensors (no pickles) with JSON metadata:
the model config, so the model can be rebuilt from the file alone; the run's state, so a run
can continue. ``locked(run_dir)`` holds an exclusive lock on run.lock while a process trains.
"""
import csv
import fcntl
import io
import json
import math
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import UserError, describe

CONFIG, METRICS, CURVES, MODEL = "config.json", "metrics.json", "curves.csv", "model.safetensors"
CHECKPOINT, LOCK = "checkpoint.safetensors", "run.lock"
RUN_FILES = (CONFIG, METRICS, CURVES, MODEL, CHECKPOINT)


def new_file_mode():
    """The mode open() gives a new file (0o666 less the umask); mkstemp's is 0o600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path, write):
    """Call write(file_path) on a temporary file beside ``path``, then rename it into place
    (with the mode a file written directly would have)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)       # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_text(path, text):
    def write(tmp):
        Path(tmp).write_text(text, encoding="utf-8")
    atomic_write(path, write)


def write_bytes(path, data):
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_json(path, obj):
    _check_finite(obj, path)
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(path, rows):
    _check_finite(rows, path)
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    write_text(path, buf.getvalue())


def read_json(path):
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable JSON file ({e})") from None
    except RecursionError:
        raise UserError(f"{path}: not a readable JSON file (nested too deeply)") from None


def save_model(path, state_dict, config):
    """Write a state_dict as safetensors with ``config`` (a dict) as JSON metadata."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"config": json.dumps(config)}))


def load_model(path):
    """(state_dict, config dict) from a file written by save_model."""
    return _load(path, "config", "safetensors model")


def _load(path, key, what):
    """(tensors, metadata[key] parsed as JSON) of a safetensors file; UserError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what.split()[-1]} file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
        value = json.loads(metadata[key])
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as e:
        raise UserError(f"{path}: not a gatedrnn {what} ({describe(e)})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: not a gatedrnn {what} (its {key} metadata is not a JSON object)")
    return tensors, value


# -- checkpoints: {part: {name: tensor}} flattened to "part/name", the run's state as JSON ---------

def save_checkpoint(path, parts, state):
    """``parts`` {"model": state_dict, "optimizer": {...}, ...}; ``state`` a JSON-able dict."""
    _check_finite(state, path)
    tensors = {f"{part}/{name}": t.detach().cpu().contiguous()
               for part, named in parts.items() for name, t in named.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp,
                                             metadata={"checkpoint": json.dumps(state)}))


def load_checkpoint(path):
    """(parts, state) from a file written by save_checkpoint."""
    tensors, state = _load(path, "checkpoint", "checkpoint")
    parts = {}
    for key, t in tensors.items():
        part, _, name = key.partition("/")
        parts.setdefault(part, {})[name] = t
    return parts, state


def run_path(out, dataset, cell, variant, phase, number):
    """Where a study keeps one run: OUT/runs/<dataset>/<cell>/<variant>/<phase>/trial-NNNN
    (phase: "lr" or "seeds"; the sweep numbers trials as Optuna does, compare by seed). Names
    that hold a path (wav:DIR, module:Class) are made into one folder name."""
    safe = [re.sub(r"[^A-Za-z0-9_.-]", "_", part) for part in (dataset, cell, variant, phase)]
    return Path(out, "runs", *safe, f"trial-{number:04d}")


def provenance():
    """What made a run: gatedrnn's version and, when it runs from a git checkout, the commit
    (with "-dirty" when tracked files differ from it); torch's version."""
    import subprocess
    import torch
    from . import __version__
    here = Path(__file__).resolve().parent
    commit = None
    try:
        out = subprocess.run(["git", "-C", str(here), "describe", "--always", "--dirty",
                              "--abbrev=40", "--match=no-tags"], capture_output=True, text=True,
                             timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            commit = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass                                          # no git, or not a checkout
    return {"gatedrnn": __version__, "commit": commit, "torch": torch.__version__}


def holds_run(run_dir):
    """The run files already in ``run_dir`` (empty if none)."""
    return [name for name in RUN_FILES if (Path(run_dir) / name).exists()]


@contextmanager
def locked(run_dir):
    """Hold an exclusive lock on run_dir/run.lock; a second process gets a UserError at once.
    The lock goes with the process, however it ends (the kernel releases it). Temporary files
    a killed process left behind are removed once the lock is held."""
    path = Path(run_dir) / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise UserError(f"{run_dir}: another process is training into this run directory "
                        f"(it holds {LOCK}); wait for it or choose another directory") from None
    try:
        for stale in Path(run_dir).glob(".*.tmp"):  # left by a process killed mid-write
            stale.unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)


def _check_finite(obj, path):
    """No silent NaN or infinity in a result file."""
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"refusing to write a non-finite value to {path}")
    if isinstance(obj, dict):
        for v in obj.values():
            _check_finite(v, path)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check_finite(v, path)
