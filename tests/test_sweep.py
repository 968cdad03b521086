"""The Table 2 sweep: protocol, aggregation, resume, report, and many workers on PostgreSQL.

Tiny generated data (the JSB split sizes, sequences of 2-4 steps), 4 units, a few epochs: each
trial takes a fraction of a second, so the tests measure the engine, not the training.
"""
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from gatedrnn import sweep
from gatedrnn.cli import main
from gatedrnn.report import aggregate, records_from_run_dirs, table2_markdown

SRC = Path(sweep.__file__).resolve().parents[1]
TINY = ["--hidden-size", "4", "--batch-size", "64", "--epochs", "2", "--weight-noise", "0"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A JSB_Chorales.mat with the published split sizes (229/76/77) of 2-4 step sequences."""
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    out = {}
    for split, n in (("train", 229), ("valid", 76), ("test", 77)):
        cells = np.empty((1, n), dtype=object)
        for i in range(n):
            roll = np.zeros((int(rng.integers(2, 5)), 88), np.uint8)
            roll[:, 30:42] = rng.random((len(roll), 12)) < 0.3
            cells[0, i] = roll
        out[split + "data"] = cells
    scipy.io.savemat(folder / "JSB_Chorales.mat", out)
    return folder


def reproduce_args(out, data, *extra):
    return ["reproduce", "--datasets", "jsb", "--trials", "2", "--seeds", "2", "--out", str(out),
            "--data-dir", str(data), "--poll", "0.2", "--heartbeat-interval", "1",
            "--grace-period", "5", *TINY, *extra]


def finished_runs(out):
    return sorted(p.parent for p in (Path(out) / "runs").glob("*/*/*/*/trial-*/metrics.json"))


def stamp(runs):
    return {p: (p / "metrics.json").stat().st_mtime_ns for p in runs}


# ---------------------------------------------------------------------------------- protocol

def test_learning_rates_log_uniform_seeded_and_shared_by_groups():
    a = sweep.SweepConfig(trials=10, seed=0)
    lrs = a.learning_rates()
    assert len(lrs) == 10 and lrs == sorted(lrs) and len(set(lrs)) == 10
    assert all(1e-4 <= lr <= 1e-2 for lr in lrs)
    assert lrs == sweep.SweepConfig(trials=10, seed=0, cells=["gru"]).learning_rates()
    assert lrs != sweep.SweepConfig(trials=10, seed=1).learning_rates()
    assert a.slots("lr") == [(lr, 0) for lr in lrs]
    assert a.slots("seeds", 3e-3) == [(3e-3, 1), (3e-3, 2), (3e-3, 3)]   # new seeds, not the lr run's


def record(cell, phase, lr, seed, trial, valid, test=None):
    m = {"train_nll": valid - 1, "valid_nll": valid, "test_nll": test or valid + 0.5, "epochs": 5,
         "best_epoch": 4, "seconds": 2.0, "params": 100}
    c = {"dataset": "jsb", "lr": lr, "seed": seed, "batch_size": 16, "epochs": 20, "patience": 20,
         "model": {"cell": cell, "variant": "paper", "weight_noise": 0.075}}
    return {"dataset": "jsb", "cell": cell, "variant": "paper", "phase": phase, "lr": lr,
            "seed": seed, "trial": trial, "run_dir": f"/r/{phase}/{trial}", "config": c, "metrics": m}


def test_aggregate_best_lr_then_seeds_once_each():
    recs = [record("gru", "lr", 1e-3, 0, 0, 9.0), record("gru", "lr", 3e-3, 0, 1, 8.5),
            record("gru", "seeds", 3e-3, 1, 0, 8.6, 8.8), record("gru", "seeds", 3e-3, 2, 1, 8.4, 8.6),
            record("gru", "seeds", 3e-3, 2, 2, 7.0, 1.0),     # a retried slot that also finished
            record("gru", "seeds", 1e-3, 3, 3, 1.0, 1.0)]     # not at the best lr
    (row,) = aggregate(recs)
    assert row["lr"] == 3e-3 and row["seeds"] == 2 and row["seed_list"] == [1, 2]
    assert row["test_nll_mean"] == pytest.approx(8.7)
    assert row["test_nll_std"] == pytest.approx(np.std([8.8, 8.6], ddof=1))
    assert row["valid_nll_mean"] == pytest.approx(8.5)
    assert row["lr_candidates"] == [(1e-3, 9.0), (3e-3, 8.5)]
    assert row["best_run"] == "/r/seeds/1" and (row["paper_train_nll"], row["paper_test_nll"]) == (6.94, 8.54)


def test_a_nade_table_is_set_beside_rnn_nade_and_the_papers_best_unit():
    recs = [record("gru", "seeds", 3e-3, seed, seed, 6.0, test) for seed, test in ((1, 6.1), (2, 6.3))]
    for r in recs:
        r["config"]["model"]["head"] = "nade"
        r["metrics"]["head_params"] = 37_586
    text = table2_markdown(aggregate(recs))
    assert "| jsb | gru, nade 37,586 | 6.20 ± 0.14 | 5.56 | 6.27 | 8.58 | 8.54 |" in text
    recs[0]["config"]["model"]["head"] = recs[1]["config"]["model"]["head"] = "bernoulli"
    assert "RNN-NADE" not in table2_markdown(aggregate(recs))     # only beside NADE heads


def test_a_table_of_several_units_ends_with_test_nll_by_unit_the_best_in_bold():
    recs = [record(cell, "seeds", 3e-3, 1, k, 8.0, test)
            for k, (cell, test) in enumerate([("tanh", 8.704), ("gru", 8.496), ("mgu", 8.5049)])]
    text = table2_markdown(aggregate(recs))
    assert text.rstrip().endswith("| dataset | tanh | gru | mgu |\n|---|---|---|---|\n"
                                  "| jsb | 8.70 | **8.50** | **8.50** |")      # tied at 2 decimals
    assert "by unit" not in table2_markdown(aggregate(recs[:1]))       # one unit: no such table


def test_journal_heartbeat_fails_a_stale_trial_and_retries_its_slot(tmp_path):
    import optuna
    storage = sweep.open_storage(f"journal:{tmp_path / 'j.log'}", 1, 2)
    other = sweep.open_storage(f"journal:{tmp_path / 'j.log'}", 1, 2)    # another worker's
    config = sweep.SweepConfig(name="hb", datasets=["jsb"], cells=["gru"], trials=2, seeds=1)
    assert sweep.create(storage, config) == 2
    study = optuna.load_study(study_name="hb/jsb/gru/paper/lr", storage=storage)
    first = study.get_trials()[0]
    trial_id = trial_id_of(storage, study, first.number)
    assert storage.set_trial_state_values(trial_id, optuna.trial.TrialState.RUNNING)
    sweep.fail_stale_trials(storage, study)
    assert study.get_trials()[0].state.name == "RUNNING"          # just started: alive
    storage.record_heartbeat(trial_id)
    storage.set_trial_user_attr(trial_id, "run_dir", "/r/lr/0")  # what the attempt wrote
    sweep.fail_stale_trials(storage, study)
    assert study.get_trials()[0].state.name == "RUNNING"          # fresh heartbeat: alive
    storage.set_trial_system_attr(trial_id, sweep.HEARTBEAT, time.time() - 10)
    sweep.fail_stale_trials(storage, study)
    sweep.fail_stale_trials(other, optuna.load_study(study_name=study.study_name, storage=other))
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "WAITING", "WAITING"]   # one retry
    retry = trials[2]
    assert retry.user_attrs == first.user_attrs and retry.system_attrs["failed_trial"] == 0
    assert sweep.HEARTBEAT not in retry.system_attrs            # its start is its first beat
    assert sweep.create(storage, config) == 0                    # resume: nothing re-enqueued
    s = sweep.status(storage, "hb")
    assert (s.total, s.done, s.waiting, s.failed) == (3, 0, 2, 1)
    assert storage.set_trial_state_values(trial_id_of(storage, study, retry.number),
                                          optuna.trial.TrialState.RUNNING)
    sweep.fail_stale_trials(storage, study)
    assert study.get_trials()[2].state.name == "RUNNING"        # no inherited heartbeat


def test_journal_stale_slot_is_retried_max_retry_times(tmp_path):
    import optuna
    storage = sweep.open_storage(f"journal:{tmp_path / 'j.log'}", 1, 2)
    sweep.create(storage, sweep.SweepConfig(name="mr", datasets=["jsb"], cells=["gru"], trials=1,
                                            seeds=1))
    study = optuna.load_study(study_name="mr/jsb/gru/paper/lr", storage=storage)
    for _ in range(sweep.MAX_RETRY + 1):
        (waiting,) = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
        trial_id = trial_id_of(storage, study, waiting.number)
        assert storage.set_trial_state_values(trial_id, optuna.trial.TrialState.RUNNING)
        storage.set_trial_system_attr(trial_id, sweep.HEARTBEAT, time.time() - 10)
        sweep.fail_stale_trials(storage, study)
    assert [t.state.name for t in study.get_trials()] == ["FAIL"] * (sweep.MAX_RETRY + 1)
    assert {t.user_attrs["slot"] for t in study.get_trials()} == {0}
    assert sweep.create(storage, sweep.SweepConfig(name="mr", datasets=["jsb"], cells=["gru"],
                                                   trials=1, seeds=1)) == 1   # resume: again


def trial_id_of(storage, study, number):
    return storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), number)


# ---------------------------------------------------------------------------------- a worker, in process

def tiny_sweep(tmp_path, tiny_data, name):
    """A journal storage holding a sweep of one group: one lr slot, one seed slot, 2 epochs of a
    4-unit GRU -> (storage, its lr study, the sweep's settings)."""
    import optuna
    storage = sweep.open_storage(f"journal:{tmp_path / 'j.log'}", 1, 2)
    options = {"batch_size": 64, "epochs": 2, "data_dir": str(tiny_data),
               "model": {"hidden_size": 4, "weight_noise": 0.0}}
    sweep.create(storage, sweep.SweepConfig(name=name, datasets=["jsb"], cells=["gru"], trials=1,
                                            seeds=1, options=options))
    study = optuna.load_study(study_name=f"{name}/jsb/gru/paper/lr", storage=storage)
    return storage, study, optuna.load_study(study_name=name, storage=storage).user_attrs


def lr_run_dir(out, number):
    return sweep.run_path(out, "jsb", "gru", "paper", "lr", number)


def must_not_train(*args, **kwargs):
    raise AssertionError("the slot was trained again")


def test_a_retry_adopts_the_run_its_killed_attempt_finished(tiny_data, tmp_path, monkeypatch):
    """The worker dies between writing metrics.json and reporting it (here: its trial is failed
    as stale at that point, as an idle worker does once the dead worker's heartbeat stops)."""
    import gatedrnn.train
    from optuna.trial import TrialState
    storage, study, _ = tiny_sweep(tmp_path, tiny_data, "ad")
    out, lines = tmp_path / "out", []

    def killed(hold, point):
        if point == "trained":
            (running,) = study.get_trials(states=(TrialState.RUNNING,))
            trial_id = trial_id_of(storage, study, running.number)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
            sweep._retry_stale(study, storage.get_trial(trial_id))
    monkeypatch.setattr(sweep, "_hold", killed)
    assert sweep.work(storage, "ad", out, log=lines.append, max_trials=1) == 1
    (first, _) = study.get_trials()
    assert first.state.name == "FAIL" and lines[-1].startswith("lost ")
    done = Path(first.user_attrs["run_dir"])
    metrics, before = json.loads((done / "metrics.json").read_text()), stamp([done])

    monkeypatch.setattr(gatedrnn.train, "train", must_not_train)
    assert sweep.work(storage, "ad", out, log=lines.append, max_trials=1) == 1
    (_, retry) = study.get_trials()
    assert retry.system_attrs["failed_trial"] == first.number and lines[-1].startswith("adopt ")
    assert retry.state.name == "COMPLETE" and retry.value == metrics["valid_nll"]
    assert retry.user_attrs["adopted"] == first.number and retry.user_attrs["metrics"] == metrics
    assert retry.user_attrs["run_dir"] == str(done) and stamp([done]) == before
    assert not lr_run_dir(out, retry.number).exists()
    assert sweep.status(storage, "ad").done == 1
    assert sweep.records(storage, "ad") == records_from_run_dirs(out)   # the same one run


@pytest.mark.parametrize("left, lr_factor, adopted", [
    ({"valid_nll": 7.5}, 1, "result"),                              # finished: adopted
    ({"stopped": {"reason": "non-finite", "error": "loss is nan at epoch 1, update 2"}}, 1,
     "diverged"),                                                   # diverged: settled as such
    ({"valid_nll": 7.5, "stopped": {"reason": "SIGTERM", "epoch": 1, "update": 2}}, 1, None),
    (None, 1, None),                                                # killed while training
    ({"valid_nll": 7.5}, 2, None),                                  # not this slot's run
])
def test_which_run_of_an_earlier_attempt_a_retry_adopts(left, lr_factor, adopted, tiny_data,
                                                        tmp_path, monkeypatch):
    import gatedrnn.train
    from optuna.trial import TrialState
    storage, study, settings = tiny_sweep(tmp_path, tiny_data, "ad")
    out = tmp_path / "out"
    (first,) = study.get_trials()
    first_id = trial_id_of(storage, study, first.number)
    assert storage.set_trial_state_values(first_id, TrialState.RUNNING)   # a worker took it,
    run_dir = lr_run_dir(out, first.number)                               # left this and died
    run_dir.mkdir(parents=True)
    config = sweep.trial_config(settings["options"], "jsb", "gru", "paper",
                                first.user_attrs["lr"] * lr_factor, 0)
    (run_dir / "config.json").write_text(json.dumps({"config": config.to_dict()}))
    if left is not None:
        (run_dir / "metrics.json").write_text(json.dumps(left))
    storage.set_trial_system_attr(first_id, sweep.HEARTBEAT, time.time() - 10)
    sweep.fail_stale_trials(storage, study)
    trained = []
    def fake_train(config, run_dir, *args, **kwargs):      # writes what a real run writes first
        trained.append(run_dir)
        run_dir.mkdir(parents=True)
        (run_dir / "config.json").write_text(json.dumps({"config": config.to_dict()}))
        return {"valid_nll": 9.0, "test_nll": 9.5, "epochs": 2, "seconds": 0.1}
    monkeypatch.setattr(gatedrnn.train, "train", fake_train)
    assert sweep.work(storage, "ad", out, log=lambda line: None, max_trials=1) == 1
    (_, retry) = study.get_trials()
    assert retry.system_attrs["failed_trial"] == first.number
    if adopted is None:
        assert trained == [lr_run_dir(out, retry.number)]
        assert retry.state.name == "COMPLETE" and retry.value == 9.0
        assert "adopted" not in retry.user_attrs
    else:
        assert trained == [] and retry.user_attrs["adopted"] == first.number
        assert retry.user_attrs["run_dir"] == str(run_dir.resolve())
    if adopted == "result":
        assert retry.state.name == "COMPLETE" and retry.value == 7.5
    if adopted == "diverged":
        assert retry.state.name == "FAIL"
        assert retry.user_attrs["diverged"] == left["stopped"]["error"]
        assert sweep.status(storage, "ad").done == 1                # settled


def test_a_run_stopped_by_a_signal_is_no_result_and_its_slot_runs_again(tiny_data, tmp_path,
                                                                      monkeypatch):
    import gatedrnn.train
    storage, study, settings = tiny_sweep(tmp_path, tiny_data, "st")
    stopped = {"valid_nll": 8.0, "stopped": {"reason": "SIGTERM", "epoch": 1, "update": 3}}
    monkeypatch.setattr(gatedrnn.train, "train", lambda *a, **k: stopped)
    with pytest.raises(KeyboardInterrupt):                     # the worker stops, as asked
        sweep.work(storage, "st", tmp_path / "out", log=lambda line: None)
    (trial,) = study.get_trials()
    assert trial.state.name == "FAIL"
    assert trial.user_attrs["error"] == "stopped by SIGTERM in epoch 1"
    s = sweep.status(storage, "st")
    assert (s.done, s.failed) == (0, 1) and sweep.records(storage, "st") == []
    assert sweep.create(storage, sweep.SweepConfig(
        name="st", datasets=["jsb"], cells=["gru"], trials=1, seeds=1,
        options=settings["options"])) == 1                          # resume: the slot again


# ---------------------------------------------------------------------------------- journal, end to end

@pytest.fixture(scope="module")
def journal_sweep(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "out"
    started = time.perf_counter()
    rc = main(reproduce_args(out, tiny_data, "--workers", "1"))
    assert rc == 0
    return out, time.perf_counter() - started


def test_sweep_writes_table_json_and_figures_from_its_runs(journal_sweep, capsys):
    out, _ = journal_sweep
    runs = finished_runs(out)
    assert len(runs) == 3 * (2 + 2)                       # three units x (2 lrs + 2 seeds)
    rows = json.loads((out / "table2.json").read_text())
    assert [(r["dataset"], r["cell"], r["variant"]) for r in rows] == [
        ("jsb", "tanh", "paper"), ("jsb", "gru", "paper"), ("jsb", "lstm", "paper")]
    for row in rows:
        assert set(sweep_fields()) <= set(row)
        base = out / "runs" / "jsb" / row["cell"] / "paper"
        lr_runs = [json.loads((p / "metrics.json").read_text()) | {"lr": lr_of(p)}
                   for p in sorted((base / "lr").iterdir())]
        best = min(lr_runs, key=lambda m: m["valid_nll"])
        assert row["lr"] == best["lr"]
        seed_runs = [json.loads((p / "metrics.json").read_text()) for p in sorted((base / "seeds").iterdir())]
        assert [lr_of(p) for p in (base / "seeds").iterdir()] == [best["lr"]] * 2
        test = [m["test_nll"] for m in seed_runs]
        assert row["seeds"] == 2 and row["batch_size"] == 64
        assert row["test_nll_mean"] == pytest.approx(np.mean(test), rel=1e-12)
        assert row["test_nll_std"] == pytest.approx(np.std(test, ddof=1), rel=1e-9)
        assert row["valid_nll_mean"] == pytest.approx(np.mean([m["valid_nll"] for m in seed_runs]))
        assert row["train_nll_mean"] == pytest.approx(np.mean([m["train_nll"] for m in seed_runs]))
        assert row["seconds"] == pytest.approx(np.mean([m["seconds"] for m in seed_runs]))
    md = (out / "table2.md").read_text()
    assert "| jsb | gru | paper |" in md and "6.94 | 8.54" in md and "[0.0001, 0.01]" in md
    png = (out / "curves-jsb.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert not list(out.glob(".*tmp"))                    # atomic writes leave no temporaries


def lr_of(run):
    return json.loads((run / "config.json").read_text())["config"]["lr"]


def sweep_fields():
    from gatedrnn.report import RESULT_FIELDS
    return RESULT_FIELDS


def test_rerun_resumes_and_trains_nothing(journal_sweep, tiny_data, capsys):
    out, _ = journal_sweep
    before = stamp(finished_runs(out))
    assert main(reproduce_args(out, tiny_data, "--workers", "2")) == 0
    assert stamp(finished_runs(out)) == before
    assert "trials done 12/12  running 0  left 0" in capsys.readouterr().err
    assert not (out / "logs" / "worker-1.log").exists()   # nothing to do: no worker started


def test_diverged_runs_are_listed_never_averaged():
    diverged = dict(record("gru", "lr", 1e-2, 0, 2, 0.0), metrics=None, config=None,
                    diverged="gradient norm is inf at epoch 5, update 3256")
    seed_diverged = dict(record("gru", "seeds", 3e-3, 3, 2, 0.0), metrics=None, config=None,
                         diverged="loss is nan at epoch 2, update 9")
    recs = [record("gru", "lr", 1e-3, 0, 0, 9.0), record("gru", "lr", 3e-3, 0, 1, 8.5), diverged,
            record("gru", "seeds", 3e-3, 1, 0, 8.6, 8.8), seed_diverged]
    (row,) = aggregate(recs)
    assert row["lr"] == 3e-3 and row["seeds"] == 1 and row["seed_list"] == [1]
    assert row["lr_candidates"] == [(1e-3, 9.0), (3e-3, 8.5), (1e-2, None)]
    assert "1.00e-02: diverged" in table2_markdown([row])
    assert aggregate([diverged]) == []


def test_storage_keeps_a_diverged_trial_as_a_record_without_metrics(journal_sweep, tmp_path):
    import optuna
    out, _ = journal_sweep
    shutil.copy(out / sweep.JOURNAL_FILE, tmp_path / sweep.JOURNAL_FILE)   # leave the fixture's alone
    storage = sweep.open_storage(f"journal:{tmp_path / sweep.JOURNAL_FILE}")
    study = optuna.load_study(study_name=sweep.study_name("table2", "jsb", "gru", "paper", "lr"),
                              storage=storage)
    trial = study.ask()
    lr = trial.suggest_float("lr", *sweep.settings_of(storage, "table2")["lr_range"], log=True)
    for key, value in {"seed": 0, "slot": 9, "run_dir": "/r/lr/9", "diverged": "loss is nan"}.items():
        trial.set_user_attr(key, value)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    recs = sweep.records(storage, "table2")
    (bad,) = [r for r in recs if r.get("diverged")]
    assert (bad["cell"], bad["phase"], bad["lr"], bad["metrics"]) == ("gru", "lr", lr, None)
    (row,) = [r for r in aggregate(recs) if r["cell"] == "gru"]
    assert (lr, None) in row["lr_candidates"] and row["seeds"] == 2


def test_report_rebuilds_the_same_table_from_run_dirs(journal_sweep, tmp_path, capsys):
    out, _ = journal_sweep
    copy = tmp_path / "copy"
    shutil.copytree(out / "runs", copy / "runs")          # run directories only, no storage
    shutil.copy(out / "sweep.json", copy)
    assert main(["report", str(copy)]) == 0
    assert (copy / "table2.md").read_text() == (out / "table2.md").read_text().replace(str(out), str(copy))
    ours = json.loads((copy / "table2.json").read_text())
    theirs = json.loads((out / "table2.json").read_text())
    for a, b in zip(ours, theirs):
        for key in ("run_dirs", "best_run"):
            a.pop(key), b.pop(key)
    assert ours == theirs
    assert (copy / "curves-jsb.png").is_file()


def test_retried_attempt_without_metrics_is_left_out_of_the_report(journal_sweep, tmp_path):
    out, _ = journal_sweep
    copy = tmp_path / "runs"
    shutil.copytree(out / "runs", copy)
    killed = copy / "jsb" / "gru" / "paper" / "seeds" / "trial-0007"
    shutil.copytree(copy / "jsb" / "gru" / "paper" / "seeds" / "trial-0000", killed)
    (killed / "metrics.json").unlink()
    assert len(records_from_run_dirs(copy)) == 12
    signalled = json.loads((copy / "jsb" / "gru" / "paper" / "seeds" / "trial-0000" / "metrics.json").read_text())
    (killed / "metrics.json").write_text(json.dumps(dict(signalled, stopped={
        "reason": "SIGTERM", "epoch": 1, "update": 3})))
    assert len(records_from_run_dirs(copy)) == 12            # a killed attempt: left out
    (killed / "metrics.json").write_text(json.dumps(dict(signalled, stopped={
        "reason": "non-finite", "error": "loss is nan at epoch 1, update 3"})))
    recs = records_from_run_dirs(copy)
    assert len(recs) == 13 and sum(r.get("diverged") is not None for r in recs) == 1
    diverged = [r for r in recs if r.get("diverged")][0]
    assert diverged["metrics"]["test_nll"] == signalled["test_nll"]   # its best model before


def test_a_diverged_seed_counts_with_its_best_model_and_a_diverged_lr_is_not_chosen():
    recs = [record("gru", "lr", 1e-3, 0, 0, 9.0), record("gru", "lr", 3e-3, 0, 1, 8.0),
            record("gru", "seeds", 1e-3, 1, 2, 8.6, 8.8), record("gru", "seeds", 1e-3, 2, 3, 8.4, 8.6)]
    recs[1]["diverged"] = "gradient norm is inf at epoch 3, update 9"      # the better valid NLL
    recs[3]["diverged"] = "loss is nan at epoch 7, update 20"
    (row,) = aggregate(recs)
    assert row["lr"] == 1e-3 and row["lr_candidates"] == [(1e-3, 9.0), (3e-3, None)]
    assert row["seeds"] == 2 and row["diverged_seeds"] == 1
    assert row["test_nll_mean"] == pytest.approx(8.7)
    assert "(1 diverged)" in table2_markdown([row])


@pytest.mark.parametrize("args, message", [
    (["--datasets", "mnist"], "unknown dataset 'mnist'"),
    (["--trials", "0"], "--trials must be a positive integer, got 0"),
    (["--storage", "postgresql://me:hunter2@127.0.0.1:1/db"], "cannot connect"),
    (["--storage", "mysql+nodriver://x/y"], "storage 'mysql+nodriver://x/y'"),
    (["--storage", "somefile.db"], "expected journal:PATH or a database URL"),
    (["--cells", "gru", "--workers", "-1"], "--workers must be >= 0"),
])
def test_user_mistakes_one_line_status_2(args, message, tiny_data, tmp_path, capsys):
    assert main(reproduce_args(tmp_path / "out", tiny_data, *args)) == 2
    err = capsys.readouterr().err
    assert err.startswith("gatedrnn: error: ") and message in err and err.count("\n") == 1
    assert "hunter2" not in err


def test_resume_with_other_settings_and_unknown_sweep_are_user_errors(journal_sweep, tiny_data, capsys):
    out, _ = journal_sweep
    assert main(reproduce_args(out, tiny_data, "--seeds", "3")) == 2
    assert "exists in this storage with other settings (seeds" in capsys.readouterr().err
    assert main(["worker", "--storage", sweep.default_storage(out), "--study", "nope"]) == 2
    assert "no sweep 'nope'" in capsys.readouterr().err
    assert main(["report", str(out / "logs")]) == 2


# ---------------------------------------------------------------------------------- PostgreSQL

def postgres_bin():
    for folder in [*os.environ.get("PATH", "").split(os.pathsep),
                   *sorted(map(str, Path("/usr/lib/postgresql").glob("*/bin")), reverse=True)]:
        if folder and all((Path(folder) / b).is_file() for b in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    return None


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server on a free localhost port (initdb + pg_ctl in a temp dir, as
    the postgres user when we are root: initdb refuses root)."""
    folder = postgres_bin()
    if folder is None:
        if os.environ.get("GATEDRNN_REQUIRE_POSTGRES"):
            pytest.fail("GATEDRNN_REQUIRE_POSTGRES is set but no initdb / pg_ctl / postgres found")
        pytest.skip("PostgreSQL server binaries not found (initdb, pg_ctl, postgres)")
    as_user = []
    data = Path(tempfile.mkdtemp(prefix="gatedrnn-pg-"))
    if os.geteuid() == 0:
        import pwd
        user = pwd.getpwnam("postgres")
        os.chown(data, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def run(*cmd):
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)

    run(str(folder / "initdb"), "-D", str(data / "db"), "-U", "gatedrnn", "--auth=trust",
        "--no-sync", "-E", "UTF8")
    run(str(folder / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"), "-w", "-o",
        f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        yield f"postgresql://gatedrnn@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(folder / "pg_ctl"), "-D", str(data / "db"), "-m",
                        "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(data, ignore_errors=True)


def kill_a_worker_at(point, postgres_url, tiny_data, tmp_path):
    """Two workers on one sweep; the first waits at ``point`` of its first trial (sweep._hold,
    reached before the second starts) and is killed there, so the kill lands at that point
    however loaded the machine is. Returns (storage, out, the victim's trial as it was killed,
    its run directory's files then, lr study, seeds study) once the survivor has finished."""
    import optuna
    name, out, held = f"pg-{point}", tmp_path / "out", tmp_path / "held"
    storage = sweep.open_storage(postgres_url, 1, 4)
    options = {"model": {"hidden_size": 4, "weight_noise": 0.0}, "batch_size": 64, "epochs": 3,
               "patience": 20, "data_dir": str(tiny_data)}
    config = sweep.SweepConfig(name=name, datasets=["jsb"], cells=["gru"], trials=3, seeds=2,
                               options=options)
    assert sweep.create(storage, config) == 3
    cmd = [sys.executable, "-m", "gatedrnn.cli", "worker", "--storage", postgres_url, "--study",
           name, "--out", str(out), "--heartbeat-interval", "1", "--grace-period", "4",
           "--poll", "0.3"]
    env = {k: v for k, v in os.environ.items() if k != sweep.HOLD}
    env.update(PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    logs = [tmp_path / "victim.log", tmp_path / "survivor.log"]

    def start(env, log):
        with open(log, "wb") as f:
            return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    victim, survivor = start({**env, sweep.HOLD: f"{point}:{held}"}, logs[0]), None
    try:
        deadline = time.monotonic() + 300
        while not held.exists():          # written at ``point``, where the victim then stays
            assert victim.poll() is None, logs[0].read_text()
            assert time.monotonic() < deadline, "the victim did not reach " + point
            time.sleep(0.05)
        survivor = start(env, logs[1])
        lr_study = optuna.load_study(study_name=f"{name}/jsb/gru/paper/lr", storage=storage)
        (dead,) = [t for t in lr_study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
                   if t.user_attrs.get("worker", "").endswith(f":{victim.pid}")]
        files = sorted(p.name for p in Path(dead.user_attrs["run_dir"]).iterdir())
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(timeout=60) == -signal.SIGKILL
        assert survivor.wait(timeout=300) == 0, logs[1].read_text()
    finally:
        for w in (victim, survivor):
            if w is not None and w.poll() is None:
                w.kill()
                w.wait()
    seeds_study = optuna.load_study(study_name=f"{name}/jsb/gru/paper/seeds", storage=storage)
    return storage, out, dead, files, lr_study, seeds_study


def check_each_slot_once(postgres_url, tiny_data, storage, out, dead, lr_study, seeds_study):
    """The killed trial failed, one retry of it settled its slot, every slot is done exactly
    once in the storage and on disk, and the coordinator then trains nothing."""
    lr_trials, seeds_trials = lr_study.get_trials(), seeds_study.get_trials()
    killed = lr_trials[dead.number]
    assert killed.state.name == "FAIL" and "metrics" not in killed.user_attrs
    (retry,) = [t for t in lr_trials if t.system_attrs.get("failed_trial") == dead.number]
    assert retry.state.name == "COMPLETE" and retry.user_attrs["slot"] == dead.user_attrs["slot"]
    for trials, n in ((lr_trials, 3), (seeds_trials, 2)):
        complete = [t.user_attrs["slot"] for t in trials if t.state.name == "COMPLETE"]
        assert sorted(complete) == list(range(n))
        assert all(t.state.name in ("COMPLETE", "FAIL") for t in trials)
    runs, name = finished_runs(out), lr_study.study_name.split("/")[0]
    assert len(runs) == 5                                       # 3 lrs + 2 seeds, none twice
    assert (sorted((r["phase"], r["trial"], r["run_dir"]) for r in sweep.records(storage, name))
            == sorted((r["phase"], r["trial"], r["run_dir"]) for r in records_from_run_dirs(out)))

    before = stamp(runs)                      # the coordinator: the table from the storage
    assert main(["reproduce", "--storage", postgres_url, "--study", name, "--datasets", "jsb",
                 "--cells", "gru", "--trials", "3", "--seeds", "2", "--out", str(out),
                 "--data-dir", str(tiny_data), "--hidden-size", "4", "--batch-size", "64",
                 "--epochs", "3", "--weight-noise", "0", "--patience", "20", "--workers", "0",
                 "--poll", "0.2"]) == 0
    row = json.loads((out / "table2.json").read_text())[0]
    assert row["seeds"] == 2 and stamp(finished_runs(out)) == before
    assert math.isfinite(row["test_nll_mean"])
    return retry


def test_postgres_a_worker_killed_while_training_is_retried_each_slot_once(postgres_url,
                                                                          tiny_data, tmp_path):
    storage, out, dead, files, lr_study, seeds_study = kill_a_worker_at(
        "training", postgres_url, tiny_data, tmp_path)
    assert "config.json" in files and "metrics.json" not in files      # killed in epoch 1
    retry = check_each_slot_once(postgres_url, tiny_data, storage, out, dead, lr_study, seeds_study)
    assert not (Path(dead.user_attrs["run_dir"]) / "metrics.json").exists()
    assert "adopted" not in retry.user_attrs                            # trained again
    assert retry.user_attrs["run_dir"] != dead.user_attrs["run_dir"]


def test_postgres_a_worker_killed_before_reporting_its_run_is_adopted(postgres_url, tiny_data,
                                                                      tmp_path):
    storage, out, dead, files, lr_study, seeds_study = kill_a_worker_at(
        "trained", postgres_url, tiny_data, tmp_path)
    assert "metrics.json" in files                                      # finished, not reported
    done = Path(dead.user_attrs["run_dir"])
    metrics, before = json.loads((done / "metrics.json").read_text()), stamp([done])
    retry = check_each_slot_once(postgres_url, tiny_data, storage, out, dead, lr_study, seeds_study)
    assert retry.user_attrs["adopted"] == dead.number and retry.user_attrs["run_dir"] == str(done)
    assert retry.value == metrics["valid_nll"] and retry.user_attrs["metrics"] == metrics
    assert stamp([done]) == before                                       # not trained again
    assert not sweep.run_path(out, "jsb", "gru", "paper", "lr", retry.number).exists()


def test_a_dead_workers_slot_is_retried_before_later_slots(tmp_path, monkeypatch):
    """A trial whose worker died (stale heartbeat) goes back to its place in the queue: the
    next worker retries it before it takes the next group's waiting trial."""
    import optuna
    from optuna.trial import TrialState
    storage = sweep.open_storage(f"journal:{tmp_path / 'j.log'}", 1, 2)
    sweep.create(storage, sweep.SweepConfig(name="q", datasets=["jsb", "nottingham"],
                                            cells=["gru"], trials=1, seeds=1))
    jsb = optuna.load_study(study_name="q/jsb/gru/paper/lr", storage=storage)
    dead = trial_id_of(storage, jsb, 0)
    assert storage.set_trial_state_values(dead, TrialState.RUNNING)
    storage.set_trial_system_attr(dead, sweep.HEARTBEAT, time.time() - 10)   # its worker died
    ran = []
    monkeypatch.setattr(sweep, "run_trial", lambda storage, study, trial_id, group, *rest:
                        ran.append(group))
    assert sweep.work(storage, "q", tmp_path / "out", log=lambda line: None, max_trials=1) == 1
    assert ran == [("jsb", "gru", "paper")]
    assert [t.state for t in jsb.get_trials()] == [TrialState.FAIL, TrialState.RUNNING]
