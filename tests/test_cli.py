"""The `gatedrnn` command as a user runs it: a smoke run per unit on real data, and one-line
errors with exit status 2 for user mistakes."""
import json
import os
import re
import subprocess
import sys

import pytest

import gatedrnn
from gatedrnn.cli import main


def run_cli(*args, env=None):
    """The installed entry point's code path, in a subprocess (real exit status and streams)."""
    return subprocess.run([sys.executable, "-m", "gatedrnn.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("cell", ["tanh", "gru", "lstm"])
def test_train_smoke_per_unit_then_eval(cell, tmp_path, polyphonic_dir):
    run = tmp_path / cell
    r = run_cli("train", "--dataset", "jsb", "--cell", cell, "--epochs", 1, "--batch-size", 64,
                "--data-dir", polyphonic_dir, "--run-dir", run)
    assert r.returncode == 0, r.stderr
    assert "epoch   1" in r.stdout                                 # plain log lines off a terminal
    metrics = json.loads((run / "metrics.json").read_text())
    config = json.loads((run / "config.json").read_text())
    model = config["config"]["model"]
    assert model["cell"] == cell and model["hidden_size"] == {"tanh": 100, "gru": 46, "lstm": 36}[cell]
    assert metrics["recurrent_params"] == {"tanh": 18_900, "gru": 18_630, "lstm": 18_108}[cell]
    assert config["backend"] == metrics["backend"] == model["backend"] == "fast"
    assert config["gatedrnn"] == gatedrnn.__version__ and "commit" in config
    r = run_cli("eval", run)
    assert r.returncode == 0, r.stderr
    test_line = next(line for line in r.stdout.splitlines() if line.startswith("test_nll "))
    ours, recorded = test_line.split()[1], test_line.split("metrics.json: ")[1].rstrip(")")
    assert ours == recorded


def test_compare_prints_table_beside_paper(tmp_path, polyphonic_dir):
    r = run_cli("compare", "--dataset", "jsb", "--epochs", 1, "--batch-size", 64, "--cells",
                "gru", "lstm", "--data-dir", polyphonic_dir, "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| jsb | gru") or
            line.startswith("| jsb | lstm")]
    assert len(rows) == 2
    assert "| 8.54 |" in rows[0] and "| 8.67 |" in rows[1]       # the paper's JSB test NLLs
    assert (tmp_path / "runs" / "jsb" / "gru" / "paper" / "seeds" / "trial-0000" /
            "metrics.json").is_file()
    assert (tmp_path / "table2.md").read_text() in r.stdout      # `report` rebuilds the same


def test_data_dir_from_environment(tmp_path, polyphonic_dir):
    r = run_cli("train", "--dataset", "jsb", "--cell", "tanh", "--epochs", 1, "--batch-size", 128,
                "--hidden-size", 8, "--run-dir", tmp_path, env={"GATEDRNN_DATA_DIR": str(polyphonic_dir)})
    assert r.returncode == 0, r.stderr


def test_params_prints_table1(capsys):
    assert main(["params"]) == 0
    out = capsys.readouterr().out
    assert "169,065" in out and "168,888" in out and "168,400" in out     # speech, exact
    assert "19,836" in out and "20,286" in out and "20,100" in out        # music at 100 inputs


@pytest.mark.parametrize("args, message", [
    (["train", "--dataset", "mnist", "--cell", "gru", "--run-dir", "x"], "unknown dataset 'mnist'"),
    (["train", "--dataset", "jsb", "--cell", "rnn", "--run-dir", "x"], "unknown unit 'rnn'"),
    (["train", "--dataset", "jsb", "--cell", "nosuch:Unit", "--run-dir", "x"],
     "unit 'nosuch:Unit': cannot import Unit from nosuch (ModuleNotFoundError"),
    (["train", "--hidden-size", "8", "--params", "9000", "--run-dir", "x"],
     "give hidden_size or params, not both"),
    (["train", "--dataset", "jsb", "--cell", "gru", "--lr", "abc", "--run-dir", "x"],
     "argument --lr: invalid float value: 'abc'"),
    (["train", "--dataset", "jsb", "--cell", "gru", "--lr", "-1", "--run-dir", "x"],
     "lr must be a positive number"),
    (["train", "--dataset", "jsb", "--cell", "gru", "--data-dir", "/nonexistent/dir",
      "--run-dir", "x"], "/nonexistent/dir"),
    (["train", "--dataset", "jsb", "--cell", "gru", "--variant", "keras", "--run-dir", "x"],
     "unknown variant 'keras'"),
    (["train", "--dataset", "jsb", "--cell", "gru", "--backend", "foo", "--run-dir", "x"],
     "unknown backend 'foo'; expected one of fast, reference"),
    (["eval", "/nonexistent/run"], "/nonexistent/run"),
])
def test_user_mistakes_get_one_line_and_status_2(args, message, tmp_path):
    r = subprocess.run([sys.executable, "-m", "gatedrnn.cli", *args], capture_output=True,
                       text=True, cwd=tmp_path, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_corrupt_model_file_is_a_user_error(tmp_path, polyphonic_dir):
    r = run_cli("train", "--dataset", "jsb", "--cell", "gru", "--epochs", 1, "--batch-size", 128,
                "--hidden-size", 4, "--data-dir", polyphonic_dir, "--run-dir", tmp_path)
    assert r.returncode == 0, r.stderr
    (tmp_path / "model.safetensors").write_bytes(b"not a model")
    r = run_cli("eval", tmp_path)
    assert r.returncode == 2 and "model.safetensors" in r.stderr and "Traceback" not in r.stderr


def test_bench_prints_ratios():
    r = run_cli("bench", "--units", "gru", "mingru", "--tasks", "music", "--batches", "2",
                "--steps", "5", "--repeats", "1", "--skip-epoch")
    assert r.returncode == 0, r.stderr
    assert re.search(r"ours at torch's (\d+) thread\(s\) where the batch can use them \(one per "
                     r"4 rows: batch 1 on one\), torch.nn at 1 and at \1 thread", r.stdout)
    fresh = next(line for line in r.stdout.splitlines() if line.startswith("| gru | "))
    assert re.fullmatch(r"\| gru \| \d+\.\d \| \d+\.\d \|", fresh)
    row = next(line for line in r.stdout.splitlines() if line.startswith("| music | gru | 46 | 2 |"))
    assert re.search(r"\| - \| [\d.]+ \| [\d.]+ \| [\d.]+x \|$", row)      # no reference asked
    row = next(line for line in r.stdout.splitlines() if line.startswith("| music | mingru | 112 | 2 |"))
    assert re.search(r"\| [\d.]+ \| [\d.]+ \| - \| - \| [\d.]+x \|$", row)  # scan vs loop