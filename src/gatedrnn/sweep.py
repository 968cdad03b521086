"""The paper's Table 2 protocol as an Optuna sweep that runs on one machine or many.

Protocol (the paper's section 4, with its code's settings), per dataset, unit and variant (a
*group*):

1. lr phase: ``trials`` learning rates drawn log-uniformly over ``lr_range`` from a seeded RNG
   (the same draws for every group), each trained once (seed ``seed``) with early stopping on
   validation NLL.
2. seeds phase: the lr with the best validation NLL trained again with seeds
   ``seed + 1 .. seed + seeds``; the table reports mean and std over these.

Storage layout. One Optuna study per group and phase, named ``SWEEP/dataset/cell/variant/lr`` and
``.../seeds``, plus a manifest study ``SWEEP`` whose user attrs hold the sweep settings and the
groups. Every trial is *enqueued* (Optuna's ``enqueue_trial``) with its slot, lr and seed as user
attrs; workers only pop waiting trials (never sample new ones), so each slot runs once. The seeds
study is created by the first worker that sees a group's lr phase settled: creating a study is
atomic in every Optuna storage, so exactly one worker enqueues the seeds.

Failures. A worker records a heartbeat while it holds a trial: Optuna's on RDBStorage
(``heartbeat_interval``); on the journal file, which has none in Optuna 5, the trial's HEARTBEAT
system attr (``HeartbeatJournalStorage``). Before taking a trial, a worker fails those whose
heartbeat is older than ``grace_period`` (``fail_stale_trials``) and enqueues a copy of each
(same slot, Optuna's ``RetryHeartbeatStaleTrialCallback``), so a dead worker's slot is retried
in its place in the queue, not after every other slot. Results are on disk before they
are in the storage, so a retry first looks at its slot's earlier attempts: a finished run there
(the worker died after writing metrics.json, before reporting it) is adopted, not trained again
(``finished_attempt``). A killed attempt's run directory stays, without metrics.json or with a
"stopped" entry; a slot counts once. A trial whose loss goes non-finite is *diverged*: settled,
no result.

Each attempt trains with ``train.train(config, run_dir)`` into a fresh run directory
``OUT/runs/<dataset>/<cell>/<variant>/<phase>/trial-NNNN`` (the trial number) and records the run
dir, config and metrics as trial user attrs. Re-running the coordinator resumes: settled slots are
not trained again; slots left without a live trial (a crash, too many retries) are enqueued again.
"""
import copy
import functools
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import kernels
from .errors import UserError, describe
from .cells import PAPER_UNITS
from .rundir import run_path

from .train import COMPARE_DEFAULTS

# `gatedrnn reproduce` training defaults: `compare`'s minibatches, the learning rate swept.
SWEEP_DEFAULTS = {k: v for k, v in COMPARE_DEFAULTS.items() if k != "lr"}
LR_RANGE = (1e-4, 1e-2)   # log-uniform; the paper's U(-12, -6) leaves the log's base open
PHASES = ("lr", "seeds")
MAX_RETRY = 3             # a slot whose worker died this many times is left for the next resume
JOURNAL_FILE = "optuna-journal.log"
RESOLVED = {"model.hidden_size", "model.input_size", "model.output_size", "model.head"}
SWEPT = {"dataset": None, "lr": None, "seed": None, "cell": "model", "variant": "model"}
# the TrainConfig fields the sweep sets itself, and the nested config each lives in
HEARTBEAT = "heartbeat"   # trial system attr: unix time of the last heartbeat (journal storage)
SLOT_ATTRS = ("slot", "phase", "lr", "seed")   # an enqueued trial's user attrs; a retry's too
HOLD = "GATEDRNN_SWEEP_HOLD"   # test hook, read by workers only: see _hold


@dataclass
class SweepConfig:
    name: str = "table2"                       # manifest study; group studies are NAME/...
    datasets: list = field(default_factory=lambda: ["jsb", "nottingham", "musedata", "pianomidi"])
    cells: list = field(default_factory=lambda: list(PAPER_UNITS))
    variants: list = field(default_factory=lambda: ["paper"])
    trials: int = 10                           # learning rates per group
    seeds: int = 3                             # runs of the best learning rate
    lr_range: tuple = LR_RANGE
    seed: int = 0                              # lr draws and the lr phase; seeds phase: seed+1..
    options: dict = field(default_factory=dict)  # TrainConfig settings but the SWEPT ones (options_of)

    def __post_init__(self):
        from .data import task_of
        for name in ("trials", "seeds"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UserError(f"--{name} must be a positive integer, got {value!r}")
        lo, hi = self.lr_range
        if not (0 < lo < hi and math.isfinite(hi)):
            raise UserError(f"--lr-range must be two numbers 0 < low < high, got {lo!r} {hi!r}")
        if not self.datasets or not self.cells or not self.variants:
            raise UserError("--datasets, --cells and --variants each need at least one value")
        for d in self.datasets:
            task_of(d)
        for group in self.groups():                    # every unit, variant and option, checked now
            config = trial_config(self.options, *group, self.lr_range[0], self.seed)
        self.options = options_of(config)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise UserError(f"--study must be letters, digits, '_', '.' or '-', got {self.name!r}")

    def groups(self):
        return [(d, c, v) for d in self.datasets for c in self.cells for v in self.variants]

    def learning_rates(self):
        """The ``trials`` log-uniform learning rates, ascending; the same for every group."""
        lo, hi = self.lr_range
        rng = np.random.default_rng(self.seed)
        return sorted(float(x) for x in np.exp(rng.uniform(math.log(lo), math.log(hi), self.trials)))

    def slots(self, phase, best_lr=None):
        """[(lr, seed)] of a phase, indexed by slot."""
        if phase == "lr":
            return [(lr, self.seed) for lr in self.learning_rates()]
        return seed_slots(best_lr, self.seed, self.seeds)

    def settings(self):
        """What the manifest stores (and what must match when a sweep is resumed)."""
        return {"trials": self.trials, "seeds": self.seeds, "lr_range": list(self.lr_range),
                "seed": self.seed, "lrs": self.learning_rates(), "options": self.options}


def options_of(config):
    """A TrainConfig's settings as a nested dict, without the ones the sweep sets (SWEPT)."""
    d = config.to_dict()
    for name, parent in SWEPT.items():
        (d[parent] if parent else d).pop(name, None)
    return d


def trial_config(options, dataset, cell, variant, lr, seed):
    """The TrainConfig of one trial: the sweep's options with its dataset, unit, variant, lr
    and seed."""
    from .config import TrainConfig, from_dict
    d = copy.deepcopy(options)
    d.setdefault("model", {})
    for name, value in (("dataset", dataset), ("cell", cell), ("variant", variant), ("lr", lr),
                        ("seed", seed)):
        (d[SWEPT[name]] if SWEPT[name] else d)[name] = value
    return from_dict(TrainConfig, d, "sweep settings")


def seed_slots(lr, seed, n):
    """The seeds phase: the best lr with ``n`` new seeds, after the lr phase's ``seed``."""
    return [(lr, seed + 1 + k) for k in range(n)]


def study_name(sweep, dataset, cell, variant, phase):
    return f"{sweep}/{dataset}/{cell}/{variant}/{phase}"


# ---------------------------------------------------------------------------------- storage

def _optuna():
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
    return optuna


@functools.cache
def _journal_storage_class():
    optuna = _optuna()

    class HeartbeatJournalStorage(optuna.storages.JournalStorage):
        """Optuna's JournalStorage with the two heartbeat methods RDBStorage has: Optuna 5's
        journal has no heartbeat, so a trial's heartbeat is its HEARTBEAT system attr (the
        writer's unix time), and fail_stale_trials() below judges it against ``grace_period``.
        Clocks of the machines sharing the file must agree to within the grace period."""

        def __init__(self, backend, heartbeat_interval, grace_period):
            super().__init__(backend)
            self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period

        def record_heartbeat(self, trial_id):
            self.set_trial_system_attr(trial_id, HEARTBEAT, time.time())

        def get_heartbeat_interval(self):
            return self.heartbeat_interval

    return HeartbeatJournalStorage


def _retry_stale(study, trial):
    """Optuna's RetryHeartbeatStaleTrialCallback (a WAITING copy, at most MAX_RETRY times),
    given only the slot's attrs: what the lost attempt recorded (run_dir, worker, metrics, its
    last heartbeat) is not its retry's."""
    optuna = _optuna()
    trial = copy.copy(trial)                   # the storage's object is not ours to change
    trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k in SLOT_ATTRS}
    trial.system_attrs = {k: v for k, v in trial.system_attrs.items() if k != HEARTBEAT}
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, trial)


def fail_stale_trials(storage, study):
    """Fail the RUNNING trials of ``study`` whose heartbeat is older than the grace period and
    enqueue a retry of each (``_retry_stale``): Optuna's fail_stale_trials on RDBStorage; the
    same protocol, through public storage calls, on the journal (see HeartbeatJournalStorage),
    where a trial's start counts as its first heartbeat."""
    optuna = _optuna()
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState
    if not isinstance(storage, _journal_storage_class()):
        optuna.storages.fail_stale_trials(study)
        return
    now = time.time()
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = t.system_attrs.get(HEARTBEAT) or t.datetime_start.timestamp()
        if now - beat <= storage.grace_period:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        try:
            if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:       # another worker failed it first, or it finished
            continue
        _retry_stale(study, storage.get_trial(trial_id))


def default_storage(out):
    return f"journal:{Path(out).resolve() / JOURNAL_FILE}"


def open_storage(url, heartbeat_interval=30, grace_period=120):
    """``journal:PATH`` (a journal file, also on a shared filesystem) or an SQLAlchemy URL
    (``postgresql://user:pass@host/db``, ``sqlite:///file.db``), with heartbeats and retries."""
    optuna = _optuna()
    if not (isinstance(heartbeat_interval, int) and heartbeat_interval > 0
            and isinstance(grace_period, int) and grace_period > heartbeat_interval):
        raise UserError(f"heartbeat interval and grace period must be integers with 0 < interval "
                        f"< grace, got {heartbeat_interval!r} and {grace_period!r}")
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):])
        if not path.parent.is_dir():
            raise UserError(f"storage {url!r}: directory {path.parent} does not exist")
        from optuna.storages.journal import JournalFileBackend
        try:
            backend = JournalFileBackend(str(path))
        except OSError as e:
            raise UserError(f"storage {url!r}: cannot open the journal file ({describe(e)})") from None
        return _journal_storage_class()(backend, heartbeat_interval, grace_period)
    if "://" not in url:
        raise UserError(f"storage {url!r}: expected journal:PATH or a database URL such as "
                        "postgresql://user@host:5432/db")
    shown = _redact(url)
    try:
        return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_interval,
                                          grace_period=grace_period,
                                          heartbeat_stale_trial_callback=_retry_stale)
    except Exception as e:        # sqlalchemy: unknown dialect, no driver, no server, bad login
        raise UserError(f"storage {shown!r}: cannot connect "
                        f"({describe(e).splitlines()[0][:300]})") from None


def _redact(url):
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def _load(storage, name):
    optuna = _optuna()
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


# ---------------------------------------------------------------------------------- creation

def create(storage, config: SweepConfig):
    """Create the sweep (or resume it: same settings, groups may be added) and enqueue every
    slot that has no live or finished trial. Returns the number of trials enqueued."""
    optuna = _optuna()
    manifest = _load(storage, config.name)
    settings = config.settings()
    if manifest is None:
        manifest = optuna.create_study(study_name=config.name, storage=storage)
        for key, value in settings.items():
            manifest.set_user_attr(key, value)
        groups = []
    else:
        saved = {k: manifest.user_attrs.get(k) for k in settings}
        where = ("data_dir",)                            # differs between machines
        same = [{k: v for k, v in (d or {}).items() if k not in where}
                for d in (saved["options"], settings["options"])]
        diff = [k for k in settings if _jsonish(saved[k]) != _jsonish(settings[k])
                and not (k == "options" and same[0] == same[1])]
        if diff:
            raise UserError(f"sweep {config.name!r} exists in this storage with other settings "
                            f"({', '.join(diff)}: {saved[diff[0]]!r} there, {settings[diff[0]]!r} "
                            "now); use the same settings to resume, or another --study / --out")
        groups = [tuple(g) for g in manifest.user_attrs.get("groups", [])]
    enqueued = 0
    for group in config.groups():
        name = study_name(config.name, *group, "lr")
        study = _load(storage, name) or optuna.create_study(study_name=name, storage=storage)
        enqueued += _ensure_slots(study, config.slots("lr"), "lr")
        seeds = _load(storage, study_name(config.name, *group, "seeds"))
        if seeds is not None:
            enqueued += _fill_seeds(study, seeds, config.seed, config.seeds)
        if group not in groups:
            groups.append(group)
    manifest.set_user_attr("groups", [list(g) for g in groups])   # last: workers read it
    return enqueued


def _jsonish(x):
    import json
    return json.loads(json.dumps(x))


def _ensure_slots(study, slots, phase):
    live = {t.user_attrs.get("slot") for t in study.get_trials(deepcopy=False)
            if _slot_state(t) != "lost"}
    n = 0
    for slot, (lr, seed) in enumerate(slots):
        if slot not in live:
            study.enqueue_trial({"lr": lr}, user_attrs={"slot": slot, "phase": phase,
                                                        "lr": lr, "seed": seed})
            n += 1
    return n


def _slot_state(trial):
    """What a trial means for its slot: done, diverged, waiting, running or lost (its worker died
    and it was retried or given up, or it failed with an error)."""
    state = trial.state.name
    if state == "COMPLETE":
        return "done"
    if state == "FAIL" and "diverged" in trial.user_attrs:
        return "diverged"
    if state in ("WAITING", "RUNNING"):
        return state.lower()
    return "lost"


# ---------------------------------------------------------------------------------- status

@dataclass
class Status:
    total: int = 0
    done: int = 0          # settled slots: a result, or diverged
    running: int = 0
    waiting: int = 0
    failed: int = 0        # attempts lost (worker died, error); their slots are retried
    best: dict = field(default_factory=dict)     # "dataset/cell/variant" -> (lr, valid NLL)
    advanceable: list = field(default_factory=list)   # groups whose seeds study can be created
    finished: bool = False                       # nothing waiting or running, nothing to advance

    @property
    def left(self):
        return self.total - self.done - self.running

    def line(self):
        best = "  ".join(f"{k} {v[1]:.3f} (lr {v[0]:.2e})" for k, v in self.best.items())
        failed = f"  failed attempts {self.failed}" if self.failed else ""
        return (f"trials done {self.done}/{self.total}  running {self.running}  left "
                f"{self.left}{failed}" + (f"  | best valid: {best}" if best else ""))


def status(storage, sweep):
    """Where the sweep stands, read from the storage alone."""
    manifest = _load(storage, sweep)
    if manifest is None:
        raise UserError(f"no sweep {sweep!r} in this storage; create it with gatedrnn reproduce")
    attrs = manifest.user_attrs
    s = Status()
    for group in map(tuple, attrs.get("groups", [])):
        s.total += attrs["trials"] + attrs["seeds"]
        lr_settled = True
        for phase, n in (("lr", attrs["trials"]), ("seeds", attrs["seeds"])):
            study = _load(storage, study_name(sweep, *group, phase))
            trials = study.get_trials(deepcopy=False) if study is not None else []
            states = {}
            for t in trials:
                states.setdefault(t.user_attrs.get("slot"), []).append(_slot_state(t))
            settled = sum(1 for v in states.values() if {"done", "diverged"} & set(v))
            s.done += settled
            s.running += sum(x == "running" for v in states.values() for x in v)
            s.waiting += sum(x == "waiting" for v in states.values() for x in v)
            s.failed += sum(x == "lost" for v in states.values() for x in v)
            if phase == "lr":
                lr_settled = settled == n
                complete = [t for t in trials if t.state.name == "COMPLETE"]
                if complete:
                    b = min(complete, key=lambda t: t.value)
                    label = "/".join(group if group[2] != "paper" else group[:2])
                    s.best[label] = (b.user_attrs["lr"], b.value)
                if study is None or not (lr_settled and complete):
                    break
            elif study is None:
                s.advanceable.append(group)
    s.finished = not (s.running or s.waiting or s.advanceable)
    return s


def advance(storage, sweep, group):
    """Create a group's seeds study with its best lr and enqueue the seeds (if nobody has)."""
    optuna = _optuna()
    manifest = _load(storage, sweep)
    try:
        seeds = optuna.create_study(study_name=study_name(sweep, *group, "seeds"), storage=storage)
    except optuna.exceptions.DuplicatedStudyError:
        return False                                     # another worker got there first
    a = manifest.user_attrs
    _fill_seeds(_load(storage, study_name(sweep, *group, "lr")), seeds, a["seed"], a["seeds"])
    return True


def _fill_seeds(lr_study, seeds, seed, n):
    """Record the best lr in the seeds study (once) and enqueue its missing seed slots."""
    if "lr" not in seeds.user_attrs:
        complete = [t for t in lr_study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
        best = min(complete, key=lambda t: (t.value, t.number))
        seeds.set_user_attr("lr", best.user_attrs["lr"])
        seeds.set_user_attr("lr_trial", best.number)
    lr = seeds.user_attrs["lr"]
    return _ensure_slots(seeds, seed_slots(lr, seed, n), "seeds")


# ---------------------------------------------------------------------------------- worker

def work(storage, sweep, out, data_dir=None, log=print, poll=2.0, max_trials=None):
    """Run waiting trials of sweep ``sweep`` until nothing is waiting, running or advanceable.
    Returns the number of trials this worker ran."""
    manifest = _load(storage, sweep)
    if manifest is None:
        raise UserError(f"no sweep {sweep!r} in this storage; create it with gatedrnn reproduce")
    cache, ran = {}, 0
    while max_trials is None or ran < max_trials:
        s = status(storage, sweep)
        for group in s.advanceable:
            if advance(storage, sweep, group):
                log(f"{'/'.join(group)}: lr phase done, seeds enqueued")
        if s.finished:
            break
        if s.running:            # a dead worker's trial goes back to its place in the queue
            _fail_stale(storage, sweep, manifest)      # before later slots are taken
        popped = _pop(storage, sweep, manifest)
        if popped is None:
            time.sleep(poll)
            manifest = _load(storage, sweep)
            continue
        study, trial_id, group, phase = popped
        run_trial(storage, study, trial_id, group, phase, manifest.user_attrs, out, data_dir,
                  cache, log)
        ran += 1
    return ran


def _fail_stale(storage, sweep, manifest):
    """fail_stale_trials on every study of the sweep."""
    for group in map(tuple, manifest.user_attrs["groups"]):
        for phase in PHASES:
            study = _load(storage, study_name(sweep, *group, phase))
            if study is not None:
                fail_stale_trials(storage, study)


def _pop(storage, sweep, manifest):
    """Take one waiting trial (atomically: set_trial_state_values to RUNNING succeeds for one
    worker only), seeds phases first: a group whose lr phase has settled is finished before
    new lr trials start, so a sweep cut short leaves whole table rows, in --datasets order."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState
    for phase in reversed(PHASES):
        for group in map(tuple, manifest.user_attrs["groups"]):
            study = _load(storage, study_name(sweep, *group, phase))
            if study is None:
                continue
            for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                study_id = storage.get_study_id_from_name(study.study_name)
                trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
                try:
                    if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                        return study, trial_id, group, phase
                except UpdateFinishedTrialError:
                    continue
    return None


class _Heartbeat:
    """Records the trial's heartbeat every interval while training (the storage's protocol)."""

    def __init__(self, storage, trial_id):
        self.storage, self.trial_id = storage, trial_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self):
        interval = self.storage.get_heartbeat_interval()
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:           # the trial was failed as stale meanwhile: nothing to keep
                return
            if self.stop.wait(interval):
                return

    def __enter__(self):
        self.thread.start()

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def run_trial(storage, study, trial_id, group, phase, settings, out, data_dir, cache, log):
    """Train one popped trial into its own run directory, or adopt the finished run of a lost
    earlier attempt of its slot (``finished_attempt``); record how it went in the storage."""
    with _Heartbeat(storage, trial_id):         # alive from the pop on, until reported
        _run_trial(storage, study, trial_id, group, phase, settings, out, data_dir, cache, log)


def _run_trial(storage, study, trial_id, group, phase, settings, out, data_dir, cache, log):
    optuna = _optuna()
    from .train import NonFiniteLoss, load_config_data, train
    dataset, cell, variant = group
    trial = storage.get_trial(trial_id)
    attrs, lr = trial.user_attrs, trial.user_attrs["lr"]
    if "lr" not in trial.params:                # a retry has its original's
        lo, hi = settings["lr_range"]
        lr_range = optuna.distributions.FloatDistribution(lo, hi, log=True)
        storage.set_trial_param(trial_id, "lr", lr_range.to_internal_repr(lr), lr_range)
    options = dict(settings["options"])
    if data_dir is not None:
        options["data_dir"] = str(Path(data_dir).resolve())
    config = trial_config(options, dataset, cell, variant, lr, attrs["seed"])
    name = (f"{study.study_name} trial {trial.number} (slot {attrs['slot']}, lr {lr:.3g}, "
            f"seed {attrs['seed']})")
    earlier = finished_attempt(study, trial, out, phase, config)
    if earlier is not None:
        _adopt(storage, trial_id, *earlier, config, log, name)
        return
    run_dir = run_path(out, dataset, cell, variant, phase, trial.number)
    if run_dir.exists() and any(run_dir.iterdir()):
        _report(storage, trial_id, {}, None, log, name)
        raise UserError(f"{run_dir} exists but trial {trial.number} of {study.study_name} never "
                        "ran there: the output directory holds another sweep's runs; use a fresh "
                        "--out or that sweep's --storage")
    storage.set_trial_user_attr(trial_id, "run_dir", str(run_dir.resolve()))
    storage.set_trial_user_attr(trial_id, "worker", f"{socket.gethostname()}:{os.getpid()}")
    log(f"start  {name}")
    hold = os.environ.get(HOLD, "")
    key = (config.dataset, config.data_dir, config.sample_rate, config.steps_per_quarter)
    try:
        if key not in cache:
            cache[key] = load_config_data(config)
        with kernels.training_threads(config.batch_size):
            metrics = train(config, run_dir, cache[key], log=lambda line: None,
                            progress=lambda *_: _hold(hold, "training"))
        _hold(hold, "trained")
    except NonFiniteLoss as e:
        if _report(storage, trial_id, {"diverged": str(e)}, None, log, name):
            log(f"diverged {name}: {e}")
        return
    except BaseException as e:
        _report(storage, trial_id, {"error": describe(e)[:500]}, None, log, name)
        raise
    if metrics.get("stopped"):                  # SIGINT / SIGTERM while training: not a result
        why = metrics["stopped"]
        _report(storage, trial_id, {"error": f"stopped by {why['reason']} in epoch {why['epoch']}"},
                None, log, name)
        raise KeyboardInterrupt
    if _report(storage, trial_id, {"config": _run_config(run_dir), "metrics": metrics},
               metrics["valid_nll"], log, name):
        log(f"done   {name}: valid {metrics['valid_nll']:.3f}  test {metrics['test_nll']:.3f}  "
            f"({metrics['epochs']} epochs, {metrics['seconds']:.0f} s)")


def finished_attempt(study, trial, out, phase, config):
    """(number, run_dir, metrics) of an earlier attempt of ``trial``'s slot (failed: its worker
    died) whose run directory holds a finished run of ``config``, else None. A worker killed
    between writing metrics.json and reporting it leaves such a run; its retry adopts it rather
    than train the slot again. A run stopped by a signal is no result; one that diverged is."""
    from . import rundir
    from .config import flatten
    from optuna.trial import TrialState
    mine = flatten(_jsonish(config.to_dict()))
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.number >= trial.number or t.user_attrs.get("slot") != trial.user_attrs["slot"]:
            continue
        run_dir = run_path(out, config.dataset, config.model.cell, config.model.variant, phase,
                             t.number)
        if not (run_dir / rundir.METRICS).is_file():
            continue
        try:
            metrics = rundir.read_json(run_dir / rundir.METRICS)
            saved = flatten(rundir.read_json(run_dir / rundir.CONFIG)["config"])
        except (UserError, KeyError, TypeError, AttributeError):
            continue
        # the saved config is resolved (sizes filled in): what the slot left open may differ
        if any(saved.get(k) != v for k, v in mine.items()
               if k != "data_dir" and not (v is None and k in RESOLVED)):
            continue                            # not this slot's run
        reason = (metrics.get("stopped") or {}).get("reason")
        if (reason is None and "valid_nll" in metrics) or reason == "non-finite":
            return t.number, run_dir, metrics
    return None


def _adopt(storage, trial_id, number, run_dir, metrics, config, log, name):
    """Report attempt ``number``'s finished run (finished_attempt) as this trial's own."""
    stopped = metrics.get("stopped")            # only a non-finite loss: diverged, as in training
    attrs = {"run_dir": str(run_dir.resolve()), "adopted": number, "config": _run_config(run_dir)}
    attrs.update({"diverged": stopped.get("error", "non-finite")} if stopped else
                 {"metrics": metrics})
    if _report(storage, trial_id, attrs, None if stopped else metrics["valid_nll"], log, name):
        log(f"adopt  {name}: trial {number} finished it in {run_dir} before it was lost")


def _run_config(run_dir):
    """The settings a run directory's config.json holds (resolved: sizes filled in), as the
    report reads them from there too."""
    from .train import read_run
    return read_run(run_dir)[0].to_dict()


def _report(storage, trial_id, attrs, value, log, name):
    """Record ``attrs`` (user attrs) and finish the trial: COMPLETE with ``value``, FAIL when it
    is None; True if done. A trial failed as stale meanwhile (its retry runs elsewhere) is left
    as it is: False. Storage calls rather than study.tell, which would raise ValueError, not
    UpdateFinishedTrialError, for a trial already finished."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState
    try:
        for key, v in attrs.items():
            storage.set_trial_user_attr(trial_id, key, v)
        if value is None:
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        else:
            storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [float(value)])
    except UpdateFinishedTrialError:
        log(f"lost   {name}: its heartbeat went stale and another worker retries it")
        return False
    return True


def _hold(hold, point):
    """Test hook (tests/test_sweep.py, which kills workers at these points): with
    GATEDRNN_SWEEP_HOLD=POINT:FILE in a worker's environment (``hold``), the worker creates FILE
    on reaching POINT ("training": inside the first epoch, before any metrics.json; "trained":
    metrics.json written, not yet reported) and waits there, its heartbeat going, until killed."""
    at, _, path = hold.partition(":")
    if at == point:
        Path(path).write_text(f"{os.getpid()}\n")
        threading.Event().wait()


# ---------------------------------------------------------------------------------- results

def records(storage, sweep):
    """One record per finished trial with a result, from the storage alone (the same shape as
    report.records_from_run_dirs, so the table does not depend on where it was built)."""
    from .report import record
    manifest = _load(storage, sweep)
    out = []
    for group in map(tuple, manifest.user_attrs.get("groups", [])):
        for phase in PHASES:
            study = _load(storage, study_name(sweep, *group, phase))
            for t in study.get_trials(deepcopy=False) if study is not None else []:
                done = t.state.name == "COMPLETE" and "metrics" in t.user_attrs
                diverged = t.state.name == "FAIL" and "diverged" in t.user_attrs
                if done or diverged:
                    a = t.user_attrs
                    number = a.get("adopted", t.number)       # the attempt that trained it
                    out.append(record(*group, phase, t.params["lr"], a["seed"], number,
                                      a["run_dir"], a.get("config"), a.get("metrics"),
                                      diverged=a["diverged"] if diverged else None))
    return out


def settings_of(storage, sweep):
    """The sweep settings for the results' header."""
    a = _load(storage, sweep).user_attrs
    return {"study": sweep, "trials": a["trials"], "seeds": a["seeds"], "lr_range": a["lr_range"],
            "seed": a["seed"], "lrs": a["lrs"]}


# ---------------------------------------------------------------------------------- coordinator

def worker_env(workers=1):
    """The environment for a local worker: this very gatedrnn package first on the path, and
    the machine's cores shared among the workers (torch's threads, which the kernels follow),
    unless OMP_NUM_THREADS says otherwise."""
    here = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": here + (os.pathsep + path if path else "")}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, workers))))
    return env


def reproduce(config: SweepConfig, out, storage_url=None, workers=1, heartbeat_interval=30,
              grace_period=120, data_dir=None, on_status=None, poll=2.0, worker_args=()):
    """Create or resume the sweep, run ``workers`` local worker processes (0: only wait for
    workers started elsewhere), follow their progress, then write the results to ``out``.
    Returns (Status, paths written)."""
    from .report import write_results
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    url = storage_url or default_storage(out)
    storage = open_storage(url, heartbeat_interval, grace_period)
    create(storage, config)
    s = status(storage, config.name)
    procs = []
    if not s.finished and workers > 0:
        logs = out / "logs"
        logs.mkdir(exist_ok=True)
        cmd = [sys.executable, "-m", "gatedrnn.cli", "worker", "--storage", url, "--study",
               config.name, "--out", str(out), "--heartbeat-interval", str(heartbeat_interval),
               "--grace-period", str(grace_period), "--poll", str(poll), *worker_args]
        if data_dir:
            cmd += ["--data-dir", str(data_dir)]
        for k in range(workers):
            with open(logs / f"worker-{k}.log", "ab") as f:
                procs.append(subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                              env=worker_env(workers)))
    try:
        last = None
        while True:
            s = status(storage, config.name)
            if on_status and s.line() != last:
                on_status(s)
                last = s.line()
            alive = [p for p in procs if p.poll() is None]
            if (procs and not alive) or (not procs and s.finished):
                break
            time.sleep(poll)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait()
    s = status(storage, config.name)
    if on_status and s.line() != last:
        on_status(s)
    bad = [k for k, p in enumerate(procs) if p.returncode != 0]
    paths = write_results(out, records(storage, config.name), settings_of(storage, config.name))
    if bad and s.done < s.total:            # a worker that died while others finished its work is fine
        tail = (out / "logs" / f"worker-{bad[0]}.log").read_text(errors="replace").strip()
        last_line = tail.splitlines()[-1] if tail else "no output"
        raise UserError(f"worker {bad[0]} exited with status {procs[bad[0]].returncode} "
                        f"({last_line}); see {out / 'logs'}; partial results written, rerun to resume")
    return s, paths
