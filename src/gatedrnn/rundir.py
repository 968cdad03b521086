"""A run directory on disk: config.json, metrics.json, curves.csv, model.safetensors.

Every file is written to a temporary name in the same directory, flushed, fsynced and renamed
into place, so a reader never sees a half-written file. Models are safetensors (no pickles),
with the model config in the file's metadata so the model can be rebuilt from the file alone.
"""
import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import UserError

CONFIG, METRICS, CURVES, MODEL = "config.json", "metrics.json", "curves.csv", "model.safetensors"


def atomic_write(path, write):
    """Call write(file_path) on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path, text):
    def write(tmp):
        Path(tmp).write_text(text, encoding="utf-8")
    atomic_write(path, write)


def write_json(path, obj):
    _check_finite(obj, path)
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(path, rows):
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


def save_model(path, state_dict, config):
    """Write a state_dict as safetensors with ``config`` (a dict) as JSON metadata."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"config": json.dumps(config)}))


def load_model(path):
    """(state_dict, config dict) from a file written by save_model."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: model file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path))
        config = json.loads(metadata["config"])
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise UserError(f"{path}: not a gatedrnn safetensors model ({e})") from None
    return state, config


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
