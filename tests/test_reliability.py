"""Resume after a crash, stop cleanly on a signal, lock the run directory, refuse bad
checkpoints, keep NaN out of every result file, and bit-identical runs with --deterministic.

The crash tests kill a real `gatedrnn train` process (SIGKILL at random moments, several times)
and resume it with --resume; the result must equal an uninterrupted run, bit for bit."""
import csv
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.torch import load_file

import gatedrnn.train as train_module
from gatedrnn import rundir
from gatedrnn.cli import main
from gatedrnn.errors import UserError
from gatedrnn.train import NonFiniteLoss, train
from helpers import train_config

EPOCHS = 8
ARGS = ["train", "--dataset", "jsb", "--cell", "gru", "--hidden-size", "4", "--batch-size", "8",
        "--epochs", str(EPOCHS), "--seed", "3", "--deterministic"]


def config(data_dir, **changes):
    return train_config(**{"dataset": "jsb", "cell": "gru", "hidden_size": 4, "batch_size": 8,
                          "epochs": EPOCHS, "seed": 3, "deterministic": True,
                          "data_dir": str(data_dir), **changes})


@pytest.fixture(scope="module")
def tiny_jsb(tmp_path_factory):
    """A generated 'JSB Chorales.pickle' with the published split sizes and 2-7 steps each."""
    rng = np.random.default_rng(0)

    def seq():
        return [sorted(set(rng.integers(21, 109, rng.integers(0, 4)).tolist()))
                for _ in range(rng.integers(2, 8))]
    folder = tmp_path_factory.mktemp("tiny_jsb")
    splits = {s: [seq() for _ in range(n)] for s, n in (("train", 229), ("valid", 76), ("test", 77))}
    (folder / "JSB Chorales.pickle").write_bytes(pickle.dumps(splits, protocol=2))
    return folder


@pytest.fixture(scope="module")
def reference(tiny_jsb, tmp_path_factory):
    """An uninterrupted run (in-process, same settings as the CLI runs)."""
    run = tmp_path_factory.mktemp("reference")
    metrics = train(config(tiny_jsb), run, log=lambda s: None)
    return run, metrics


def cli_process(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}       # conftest.py points PYTHONPATH here
    return subprocess.Popen([sys.executable, "-m", "gatedrnn.cli", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def without_seconds(metrics):
    return {k: v for k, v in metrics.items() if k != "seconds"}


def curves(run):
    return [{k: v for k, v in row.items() if k != "seconds"}
            for row in csv.DictReader((run / "curves.csv").open())]


def assert_same_run(run, reference_run, reference_metrics):
    """Metrics, curves and best model bit-identical to the reference; no temporary file left."""
    metrics = json.loads((run / "metrics.json").read_text())
    assert without_seconds(metrics) == without_seconds(reference_metrics)
    assert curves(run) == curves(reference_run)
    ours, theirs = load_file(str(run / "model.safetensors")), load_file(str(reference_run / "model.safetensors"))
    assert ours.keys() == theirs.keys() and all((ours[k] == theirs[k]).all() for k in ours)
    assert not list(run.glob(".*.tmp"))


def checkpoint_epoch(run):
    path = run / "checkpoint.safetensors"
    return rundir.load_checkpoint(path)[1]["epoch"] if path.exists() else 0


def wait_for_new_epoch(run, p, epoch, timeout=120):
    """Poll until ``run``'s checkpoint is past ``epoch`` (or the process ended); the time then."""
    deadline = time.monotonic() + timeout
    while checkpoint_epoch(run) == epoch and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    return time.monotonic()


def assert_readable(run):
    """Every file present is whole: parses as what it claims to be."""
    for name in ("config.json", "metrics.json"):
        if (run / name).exists():
            json.loads((run / name).read_text())
    for name in ("model.safetensors", "checkpoint.safetensors"):
        if (run / name).exists():
            load_file(str(run / name))
    if (run / "curves.csv").exists():
        rows = list(csv.DictReader((run / "curves.csv").open()))
        assert all(len(r) == 6 for r in rows)


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_result(tiny_jsb, reference,
                                                                              tmp_path):
    run = tmp_path / "run"
    args = [*ARGS, "--data-dir", tiny_jsb, "--run-dir", run]
    rng = random.Random(1)
    epochs_at_kill = []
    # once during start-up (before or while the run directory is set up), then twice in
    # the middle of training: a random moment after the process has completed a new epoch,
    # which lands inside updates, evaluation or the writing of checkpoint and result files
    for round_ in range(3):
        before = checkpoint_epoch(run)
        p = cli_process(*args, *(["--resume"] if (run / "config.json").exists() else []))
        if round_ == 0:
            time.sleep(rng.uniform(0.2, 1.5))
        else:
            # wait for two new epochs, then kill within the time the last one took: a moment
            # inside the next epoch, however fast this machine trains (a fixed delay let a
            # quiet machine finish the whole run first)
            marks = [wait_for_new_epoch(run, p, before)]
            marks.append(wait_for_new_epoch(run, p, checkpoint_epoch(run)))
            time.sleep(rng.uniform(0.0, min(0.3, marks[1] - marks[0])))
        p.send_signal(signal.SIGKILL)
        err = p.communicate()[1]
        assert p.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {err}"
        assert not (run / "metrics.json").exists()
        assert_readable(run)
        epochs_at_kill.append(checkpoint_epoch(run))
    assert 0 < epochs_at_kill[-1] < EPOCHS and epochs_at_kill == sorted(epochs_at_kill)
    p = cli_process(*args, "--resume")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert f"epoch {epochs_at_kill[-1] + 1:3d}" in out and "epoch   1 " not in out
    assert_same_run(run, *reference)


def test_ctrl_c_stops_cleanly_keeps_best_model_and_metrics_then_resumes(tiny_jsb, reference,
                                                                        tmp_path):
    run = tmp_path / "run"
    args = [*ARGS, "--data-dir", tiny_jsb, "--run-dir", run]
    p = cli_process(*args)
    deadline = time.monotonic() + 120
    while checkpoint_epoch(run) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err and "stopped by SIGINT" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stopped"]["reason"] == "SIGINT"
    assert metrics["epochs"] == metrics["stopped"]["epoch"] - 1 < EPOCHS
    rows = list(csv.DictReader((run / "curves.csv").open()))
    assert len(rows) == metrics["epochs"]
    assert metrics["valid_nll"] == min(float(r["valid_nll"]) for r in rows)
    assert set(load_file(str(run / "model.safetensors"))) == set(load_file(str(reference[0] / "model.safetensors")))
    resumed = train(config(tiny_jsb), run, log=lambda s: None, resume=True)
    assert "stopped" not in resumed
    assert_same_run(run, *reference)


def signal_at(sig, epoch, batch):
    """A progress callback that sends ``sig`` to this process after ``batch`` of ``epoch``."""
    def progress(e, i, n):
        if (e, i) == (epoch, batch):
            os.kill(os.getpid(), sig)
    return progress


def test_sigterm_stops_at_the_end_of_the_update_in_process(tiny_jsb, reference, tmp_path):
    updates_per_epoch = -(-229 // 8)
    m = train(config(tiny_jsb), tmp_path, log=lambda s: None,
              progress=signal_at(signal.SIGTERM, 3, 5))
    assert m["stopped"] == {"reason": "SIGTERM", "epoch": 3, "update": 2 * updates_per_epoch + 5}
    assert m["epochs"] == 2 and m["best_epoch"] <= 2
    assert json.loads((tmp_path / "metrics.json").read_text()) == m
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL          # handlers restored
    resumed = train(config(tiny_jsb), tmp_path, log=lambda s: None, resume=True)
    assert "stopped" not in resumed
    assert_same_run(tmp_path, *reference)


def test_deterministic_runs_are_bit_identical(tiny_jsb, reference, tmp_path):
    again = train(config(tiny_jsb), tmp_path, log=lambda s: None)
    assert_same_run(tmp_path, *reference)
    assert again["test_nll"] == reference[1]["test_nll"]
    one = [train(config(tiny_jsb, epochs=1, seed=seed), tmp_path / str(i), log=lambda s: None)
           for i, seed in enumerate((3, 3, 4))]
    assert one[0]["test_nll"] == one[1]["test_nll"] != one[2]["test_nll"]   # the check can fail


def test_resume_of_a_finished_run_changes_nothing(tiny_jsb, reference, tmp_path):
    run, metrics = reference
    again = train(config(tiny_jsb), run, log=lambda s: None, resume=True)
    assert without_seconds(again) == without_seconds(metrics)


def test_a_run_written_by_gatedrnn_0_1_is_read_and_resumed(tiny_jsb, reference, tmp_path):
    """config.json and the checkpoint in 0.1's layout (settings flat under "train", the model's
    beside them): read as the same configuration, evaluated and resumed."""
    import json
    import shutil
    from gatedrnn import rundir
    from gatedrnn.train import evaluate_run, read_run
    run = tmp_path / "old"
    shutil.copytree(reference[0], run)
    record = json.loads((run / "config.json").read_text())
    settings = dict(record["config"])
    model = settings.pop("model")
    old = {"train": {**settings, **{k: model[k] for k in ("cell", "variant", "backend",
                                                          "hidden_size", "weight_noise",
                                                          "components")}},
           "model": {k: model[k] for k in ("cell", "variant", "hidden_size", "input_size",
                                           "output_size", "head", "components", "weight_noise",
                                           "backend")},
           "normalization": None, "backend": record["backend"], "torch": record["torch"]}
    for key in ("objective", "max_step", "steps_per_quarter"):       # added since 0.1
        old["train"].pop(key)
    (run / "config.json").write_text(json.dumps(old))
    parts, state = rundir.load_checkpoint(run / "checkpoint.safetensors")
    state["train"] = old["train"]
    del state["config"]
    rundir.save_checkpoint(run / "checkpoint.safetensors", parts, state)
    assert read_run(run)[0] == read_run(reference[0])[0]
    assert evaluate_run(run)["test_nll"] == pytest.approx(reference[1]["test_nll"], rel=1e-9)
    again = train(config(tiny_jsb), run, log=lambda s: None, resume=True)
    assert without_seconds(again) == without_seconds(reference[1])


def test_compare_resume_continues_each_unit(tiny_jsb, tmp_path):
    from gatedrnn.train import compare
    base = config(tiny_jsb, epochs=2)
    first = compare(base, tmp_path, cells=("tanh",), log=lambda s: None)["jsb"]
    assert len(first["tanh"]) == 1
    first = {cell: runs[0] for cell, runs in first.items()}
    with pytest.raises(UserError, match="already holds a run"):
        compare(base, tmp_path, cells=("tanh",), log=lambda s: None)
    again = compare(base, tmp_path, cells=("tanh", "gru"), log=lambda s: None, resume=True)["jsb"]
    again = {cell: runs[0] for cell, runs in again.items()}
    assert without_seconds(again["tanh"]) == without_seconds(first["tanh"])
    assert again["gru"]["epochs"] == 2                     # not started before: started now


# -- refusals ----------------------------------------------------------------------------------

def test_existing_run_is_refused_without_resume(tiny_jsb, reference):
    with pytest.raises(UserError, match=r"already holds a run \(config.json.*use --resume to "
                       "continue it, or choose another run directory"):
        train(config(tiny_jsb), reference[0], log=lambda s: None)


def test_resume_with_different_settings_names_the_keys(tiny_jsb, reference):
    with pytest.raises(UserError, match=r"config.json: --resume with different settings: "
                       r"lr \(saved 0.001, given 0.01\), model.hidden_size \(saved 4, given 5\)"):
        train(config(tiny_jsb, hidden_size=5, lr=0.01), reference[0], resume=True)


def test_resume_with_nothing_to_resume_is_refused(tiny_jsb, tmp_path):
    with pytest.raises(UserError, match="nothing to resume"):
        train(config(tiny_jsb), tmp_path / "missing", resume=True)
    assert not (tmp_path / "missing").exists()
    with pytest.raises(UserError, match="nothing to resume"):
        train(config(tiny_jsb), tmp_path, resume=True)


def test_a_locked_run_directory_is_refused(tiny_jsb, tmp_path):
    with rundir.locked(tmp_path):
        with pytest.raises(UserError, match="another process is training into this run directory"):
            train(config(tiny_jsb), tmp_path, log=lambda s: None)
    with rundir.locked(tmp_path):                                       # released afterwards
        pass


def corrupt_checkpoints(good):
    """(name, bytes) of damaged copies of a checkpoint file."""
    header_len = int.from_bytes(good[:8], "little")
    header = json.loads(good[8:8 + header_len])
    state = json.loads(header["__metadata__"]["checkpoint"])

    def with_state(change):
        s = json.loads(json.dumps(state))
        change(s)
        h = dict(header, __metadata__={"checkpoint": json.dumps(s)})
        text = json.dumps(h).encode()
        return len(text).to_bytes(8, "little") + text + good[8 + header_len:]
    flipped = bytearray(good)
    flipped[20] ^= 0x40
    return [
        ("truncated", good[:len(good) // 2]),
        ("empty", b""),
        ("bit flip in header", bytes(flipped)),
        ("huge header", (10**15).to_bytes(8, "little") + good[8:]),
        ("random bytes", np.random.default_rng(0).bytes(2000)),
        ("metadata not JSON", good.replace(b'"checkpoint":"{', b'"checkpoint":"[', 1)),
        ("epoch a string", with_state(lambda s: s.update(epoch="3"))),
        ("curves missing", with_state(lambda s: s.pop("curves"))),
        ("numpy rng state wrong", with_state(lambda s: s.update(numpy_rng={"bit_generator": "MT"}))),
        ("best null", with_state(lambda s: s.update(best=None))),
    ]


@pytest.mark.parametrize("case", range(10))
def test_damaged_checkpoint_is_a_one_line_user_error(tiny_jsb, reference, tmp_path, case):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(reference[0], run)
    name, data = corrupt_checkpoints((run / "checkpoint.safetensors").read_bytes())[case]
    (run / "checkpoint.safetensors").write_bytes(data)
    with pytest.raises(UserError, match="checkpoint.safetensors: not a") as e:
        train(config(tiny_jsb), run, resume=True, log=lambda s: None)
    assert "\n" not in str(e.value), name


# -- non-finite values ---------------------------------------------------------------------------

def test_nan_mid_run_names_epoch_and_update_and_keeps_the_best_model(tiny_jsb, tmp_path, monkeypatch):
    real_step, calls = train_module.train_step, []

    def poisoned(model, *args, **kwargs):                # the 40th update meets a NaN weight
        calls.append(1)
        if len(calls) == 40:
            next(model.parameters()).data.fill_(float("nan"))
        return real_step(model, *args, **kwargs)
    monkeypatch.setattr(train_module, "train_step", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"loss is nan at epoch 2, update 40; the best model "
                       r"\(epoch 1\) is kept in "):
        train(config(tiny_jsb), tmp_path, log=lambda s: None)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["best_epoch"] == 1 and metrics["stopped"]["reason"] == "non-finite"
    assert "nan" not in (tmp_path / "curves.csv").read_text().lower()
    assert all(np.isfinite(t.numpy()).all() for t in load_file(str(tmp_path / "model.safetensors")).values())


def test_huge_learning_rate_ends_with_one_line_and_status_1(tiny_jsb, tmp_path, capsys):
    assert main([*ARGS, "--lr", "1e38", "--data-dir", str(tiny_jsb), "--run-dir", str(tmp_path)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gatedrnn: error: ") and " at epoch 1, update " in lines[0]
    assert "no epoch completed, so no model was saved" in lines[0]
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "model.safetensors").exists()


def test_compare_goes_on_past_a_unit_that_diverges(tiny_jsb, tmp_path, monkeypatch):
    """One unit's non-finite loss ends its run, not the comparison: the next unit trains."""
    from gatedrnn import train as train_module
    from gatedrnn.train import compare
    real = train_module.train

    def diverging(config, *args, **kwargs):
        if config.model.cell == "tanh":
            raise NonFiniteLoss("gradient norm is inf at epoch 1, update 3")
        return real(config, *args, **kwargs)
    monkeypatch.setattr(train_module, "train", diverging)
    lines = []
    results = compare(config(tiny_jsb, epochs=1), tmp_path, cells=("tanh", "gru"),
                      log=lines.append)["jsb"]
    assert results["tanh"] == [] and len(results["gru"]) == 1
    assert any("jsb / tanh / seed 3 diverged: gradient norm is inf" in line for line in lines)


def test_files_written_through_a_temporary_file_get_the_usual_mode(tmp_path):
    """mkstemp makes 0600 files: a run's files would be unreadable to the user's group."""
    from gatedrnn import rundir
    old = os.umask(0o022)
    try:
        rundir.write_text(tmp_path / "a.json", "{}")
        rundir.write_bytes(tmp_path / "b.bin", b"x")
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {"a.json": 0o644,
                                                                               "b.bin": 0o644}
