"""The paper's training protocol, as small functions.

train(config, run_dir) -> metrics: RMSProp with momentum (the paper's code settings), weight
noise on W and U at every training forward pass, the gradient norm rescaled to 1 (the paper's
text; or, with objective "released", the paper's released code: the NLL summed, the update's
norm capped instead), learning rate decaying linearly to 1% by the last epoch, the best
validation model kept and used for the test NLL (early stopping with ``patience``). NLL is in
nats per time step: summed over the output dims, averaged over all time steps of a split.
"""
import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from . import kernels, rundir
from .cells import PAPER_UNITS, count_parameters, unit_class
from .config import ModelConfig, TrainConfig, flatten, from_dict
from .data import Data, load_data
from .data.batching import length_sorted_batches
from .errors import UserError, describe
from .model import SequenceModel, resolve


class PaperRMSprop(torch.optim.Optimizer):
    """RMSProp with momentum, as in the paper's code:
        ms <- decay * ms + (1 - decay) * g^2
        v  <- momentum * v - lr * g / max(sqrt(ms), floor)
        p  <- p + s v,  s = min(1, max_step / ||v||), the norm over all parameters together
    where s = 1 without ``max_step``; the velocity v itself is never rescaled (the released
    code's ``momentum_clipping``)."""

    def __init__(self, params, lr, momentum=0.9, decay=0.95, floor=0.01, max_step=None):
        super().__init__(params, dict(lr=lr, momentum=momentum, decay=decay, floor=floor,
                                      max_step=max_step))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            steps = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["ms"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                ms, v = state["ms"], state["v"]
                ms.mul_(group["decay"]).addcmul_(p.grad, p.grad, value=1 - group["decay"])
                rms = ms.sqrt().clamp_(min=group["floor"])
                v.mul_(group["momentum"]).addcdiv_(p.grad, rms, value=-group["lr"])
                steps.append((p, v))
            scale = 1.0
            if group["max_step"] is not None and steps:
                norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(v) for _, v in steps]))
                scale = min(1.0, group["max_step"] / max(norm.item(), 1e-300))
            for p, v in steps:
                p.add_(v, alpha=scale)


def optimizer_for(model, config):
    """The paper's RMSProp for ``config`` (TrainConfig): the update's norm capped at max_step
    under the released objective."""
    return PaperRMSprop(model.parameters(), config.lr, config.momentum, config.rms_decay,
                        config.rms_floor,
                        max_step=config.max_step if config.objective == "released" else None)


class NonFiniteLoss(RuntimeError):
    pass


def lr_at(config, epoch):
    """Learning rate of a 1-based epoch: linear from lr to lr * lr_final at the last epoch."""
    frac = (epoch - 1) / max(1, config.epochs - 1)
    return config.lr * (1 - (1 - config.lr_final) * frac)


def train_step(model, optimizer, batch, config, state=None):
    """One update on one minibatch (or chunk of one, from ``state``); returns its mean NLL per
    step (with weight noise) and the final state, detached. The loss is the NLL averaged over
    the batch's steps with the gradient norm clipped (objective "mean"), or summed with no
    clipping (objective "released", whose optimizer caps the update instead)."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    nll, state = model.chunk_nll(batch.inputs, batch.targets, batch.lengths, state)
    total = nll.sum()
    if not torch.isfinite(total):
        raise NonFiniteLoss(f"loss is {total.item()}")
    (total / batch.steps if config.objective == "mean" else total).backward()
    clip = config.clip_norm if config.objective == "mean" else math.inf
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    if not torch.isfinite(norm):
        raise NonFiniteLoss(f"gradient norm is {norm.item()}")
    optimizer.step()
    return total.item() / batch.steps, _detach(state)


def _detach(state):
    return state.detach() if torch.is_tensor(state) else tuple(s.detach() for s in state)


@torch.no_grad()
def evaluate(model, batches):
    """NLL in nats per time step over all steps (the paper's), and the mean over sequences of
    each sequence's per-step NLL."""
    model.eval()
    total, steps, per_seq = 0.0, 0, []
    for b in batches:
        nll = model.step_nll(b.inputs, b.targets, b.lengths).double().sum(1)   # (B,)
        total += nll.sum().item()
        steps += b.steps
        per_seq.extend((nll / b.lengths).tolist())
    return {"nll": total / steps, "nll_per_sequence": float(np.mean(per_seq))}


def backend_of(model):
    """The backend that runs this model's recurrence (the fast one may fall back)."""
    return model.rnn.backend_for(next(model.parameters()))


def build_model(config):
    """The model of a resolved ``config`` (TrainConfig), initialised from its seed."""
    torch.manual_seed(config.seed)
    return new_model(config.model)


def new_model(mc: ModelConfig):
    """SequenceModel(mc), or a UserError if it cannot fit in this machine's memory."""
    try:
        params = count_parameters(unit_class(mc.cell), mc.input_size, mc.hidden_size, mc.variant,
                                  mc.num_layers)
    except RuntimeError:                     # a shape past what a tensor can hold, even on meta
        raise UserError(f"hidden_size {mc.hidden_size}: the model is too large to build") from None
    need = 6 * 4 * params          # float32 weights, gradients, 2 optimizer buffers, noise, best copy
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > memory:
        raise UserError(f"hidden_size {mc.hidden_size}: the model needs {params:,} parameters "
                        f"(about {need / 2**30:,.0f} GiB to train), more than this machine's "
                        f"{memory / 2**30:.0f} GiB of memory")
    try:
        return SequenceModel(mc)
    except (MemoryError, RuntimeError) as e:
        raise UserError(f"hidden_size {mc.hidden_size}: cannot allocate the model "
                        f"({describe(e)[:200]})") from None


@dataclass
class RunState:
    """Where a run stands after its last completed epoch (a checkpoint's JSON part)."""
    epoch: int = 0                  # completed epochs
    updates: int = 0
    since_best: int = 0             # epochs since the best validation NLL
    seconds: float = 0.0            # training wall-clock so far, across resumptions
    best: dict | None = None        # NLLs at the best epoch
    curves: list = field(default_factory=list)

    def finished(self, config):
        return self.epoch >= config.epochs or bool(
            config.patience and self.since_best >= config.patience)


class StopRequest:
    """SIGINT / SIGTERM set ``signal``; training stops at the end of the current update. A
    second SIGINT raises KeyboardInterrupt at once (the last checkpoint is still intact)."""

    def __init__(self):
        self.signal = None

    def __call__(self, signum, frame):
        if self.signal == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name


@contextmanager
def stop_on_signals():
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop                  # signal handlers can only be set from the main thread
        return
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextmanager
def deterministic(enabled):
    """torch.use_deterministic_algorithms and one thread while training, if ``enabled``."""
    if not enabled:
        yield
        return
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with kernels.threads(1):
            yield
    finally:
        torch.use_deterministic_algorithms(was)


def train(config: TrainConfig, run_dir, examples=None, log=print, progress=None, resume=False):
    """Train one model into ``run_dir``; returns the metrics dict also written to metrics.json.

    ``examples`` (a data.Data, or {split: [(inputs, targets)]}) skips loading the dataset;
    ``log`` gets one line per epoch; ``progress`` (optional) is called as
    progress(epoch, batch, batches_per_epoch). After every epoch a checkpoint is written;
    ``resume=True`` continues the run in ``run_dir`` from it (same config required), else a
    directory that already holds a run is refused. SIGINT / SIGTERM stop at the end of the
    current update: the best model so far is kept, metrics get a "stopped" entry. A non-finite
    loss raises NonFiniteLoss, naming epoch and update, after the same clean-up.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: exists and is not a directory; expected a run directory")
    if resume and not run_dir.is_dir():
        raise UserError(f"{run_dir}: nothing to resume (no such directory); run without --resume")
    run_dir.mkdir(parents=True, exist_ok=True)
    with rundir.locked(run_dir), stop_on_signals() as stop, deterministic(config.deterministic):
        if not resume:
            _check_fresh(run_dir)
        data = _as_data(config, examples)
        config = replace(config, model=resolve(config.model, data.task))
        saved = _check_resume(config, run_dir) if resume else None
        return _fit(config, run_dir, data, saved, log, progress, stop)


def _check_fresh(run_dir):
    found = rundir.holds_run(run_dir)
    if found:
        raise UserError(f"{run_dir} already holds a run ({', '.join(found)}); use --resume to "
                        "continue it, or choose another run directory")
    return None


def _check_resume(config, run_dir):
    """The checkpoint to continue from (None: no epoch completed yet), after checking that
    ``run_dir`` holds a run with the same settings."""
    if not (run_dir / rundir.CONFIG).is_file():
        raise UserError(f"{run_dir}: nothing to resume (no {rundir.CONFIG}); run without --resume")
    saved = read_run(run_dir)[0]
    _same_settings(config, saved.to_dict(), run_dir / rundir.CONFIG)
    if not (run_dir / rundir.CHECKPOINT).is_file():
        return None
    parts, state = rundir.load_checkpoint(run_dir / rundir.CHECKPOINT)
    if "config" not in state and isinstance(state.get("train"), dict):    # written by 0.1
        old = from_0_1({"train": state["train"], "model": saved.to_dict()["model"]})["config"]
        state["config"] = from_dict(TrainConfig, old, str(run_dir / rundir.CHECKPOINT)).to_dict()
    _same_settings(config, state.get("config", {}), run_dir / rundir.CHECKPOINT)
    return parts, state


def _same_settings(config, saved, source):
    given, saved = flatten(config.to_dict()), flatten(saved) if isinstance(saved, dict) else {}
    differ = sorted(k for k in set(given) | set(saved) if given.get(k) != saved.get(k))
    if differ:
        detail = ", ".join(f"{k} (saved {saved.get(k)!r}, given {given.get(k)!r})" for k in differ)
        raise UserError(f"{source}: --resume with different settings: {detail}; use the run's "
                        "settings, or another run directory")


def _fit(config, run_dir, data, saved, log, progress, stop):
    """The training loop of train(): epochs until done, stopped, or non-finite."""
    model = build_model(config)
    optimizer = optimizer_for(model, config)
    rng = np.random.default_rng(config.seed)       # batch order
    fixed = {s: length_sorted_batches(ex, config.eval_batch_size) for s, ex in data.examples.items()}
    run_config = {**rundir.provenance(), "config": config.to_dict(), "data": data.info,
                  "backend": backend_of(model)}
    if saved is None:
        rundir.write_json(run_dir / rundir.CONFIG, run_config)
        st, best_weights = RunState(), None
    else:
        st, best_weights = restore_checkpoint(saved, run_dir, model, optimizer, rng, run_config)
    start = time.perf_counter() - st.seconds
    try:
        while not st.finished(config):
            epoch = st.epoch + 1
            batches = length_sorted_batches(data.examples["train"], config.batch_size, rng)
            st.updates, stopped = train_epoch(model, optimizer, config, batches, epoch,
                                              st.updates, stop, progress)
            if stopped:
                log(f"stopped by {stopped} in epoch {epoch}; " + (
                    f"the best model and the checkpoint after epoch {st.epoch} are kept"
                    if st.epoch else "no epoch completed, nothing saved but the config"))
                return run_metrics(model, fixed, st, data, run_dir, best_weights, start,
                                   {"reason": stopped, "epoch": epoch, "update": st.updates})
            improved = score_epoch(model, fixed, config, st, epoch, start)
            if improved:
                best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            save_epoch(run_dir, model, optimizer, rng, st, best_weights, run_config, improved)
            log(f"epoch {epoch:3d}  train {st.curves[-1]['train_nll']:.3f}  valid "
                f"{st.curves[-1]['valid_nll']:.3f}{'  *' if improved else ''}  "
                f"({st.curves[-1]['seconds']:.0f} s)")
    except NonFiniteLoss as e:
        kept = (f"the best model (epoch {st.best['epoch']}) is kept in {run_dir}" if st.best
                else "no epoch completed, so no model was saved")
        run_metrics(model, fixed, st, data, run_dir, best_weights, start,
                    {"reason": "non-finite", "error": str(e)})
        raise NonFiniteLoss(f"{e}; {kept}") from None
    return run_metrics(model, fixed, st, data, run_dir, best_weights, start)


def train_epoch(model, optimizer, config, batches, epoch, updates, stop=None, progress=None):
    """One epoch of updates -> (update count after it, the signal name if a stop was requested:
    the epoch is then left incomplete, ended at an update boundary)."""
    for group in optimizer.param_groups:
        group["lr"] = lr_at(config, epoch)
    for i, batch in enumerate(batches):
        state = None
        for chunk in batch.chunks(config.tbptt):
            if stop is not None and stop.signal:    # set during the last update, or before
                return updates, stop.signal
            try:
                _, state = train_step(model, optimizer, chunk, config, state)
            except NonFiniteLoss as e:
                raise NonFiniteLoss(f"{e} at epoch {epoch}, update {updates + 1}") from None
            updates += 1
        if progress:
            progress(epoch, i + 1, len(batches))
    return updates, None


def score_epoch(model, fixed, config, st, epoch, start):
    """Evaluate after ``epoch``, append to the curves, track the best; True if it improved."""
    train_m, valid_m = evaluate(model, fixed["train"]), evaluate(model, fixed["valid"])
    for split, m in (("training", train_m), ("validation", valid_m)):
        if not math.isfinite(m["nll"]):
            raise NonFiniteLoss(f"{split} NLL is {m['nll']} after epoch {epoch}, update {st.updates}")
    st.epoch, st.seconds = epoch, time.perf_counter() - start
    st.curves.append({"epoch": epoch, "updates": st.updates, "seconds": round(st.seconds, 3),
                      "lr": lr_at(config, epoch), "train_nll": train_m["nll"],
                      "valid_nll": valid_m["nll"]})
    improved = st.best is None or valid_m["nll"] < st.best["valid_nll"]
    if improved:
        st.best = {"epoch": epoch, "train_nll": train_m["nll"], "valid_nll": valid_m["nll"],
                   "train_nll_per_sequence": train_m["nll_per_sequence"],
                   "valid_nll_per_sequence": valid_m["nll_per_sequence"]}
        st.since_best = 0
    else:
        st.since_best += 1
    return improved


def save_epoch(run_dir, model, optimizer, rng, st, best_weights, run_config, improved):
    """The checkpoint first (it alone is enough to resume), then the files derived from it."""
    parts = {"model": model.state_dict(), "best": best_weights,
             "optimizer": optimizer_tensors(optimizer), "rng": {"torch": torch.get_rng_state()}}
    state = asdict(st) | {"numpy_rng": rng.bit_generator.state, "config": run_config["config"]}
    rundir.save_checkpoint(run_dir / rundir.CHECKPOINT, parts, state)
    if improved:
        rundir.save_model(run_dir / rundir.MODEL, best_weights, run_config)
    rundir.write_csv(run_dir / rundir.CURVES, st.curves)


def optimizer_params(optimizer):
    """The optimizer's parameters in a fixed order: the index names their buffers."""
    return [p for g in optimizer.param_groups for p in g["params"]]


def optimizer_tensors(optimizer):
    """PaperRMSprop's buffers by parameter index: {"3.ms": ..., "3.v": ...}."""
    params = optimizer_params(optimizer)
    return {f"{i}.{k}": v for i, p in enumerate(params) for k, v in optimizer.state[p].items()}


def restore_checkpoint(saved, run_dir, model, optimizer, rng, run_config):
    """Load a checkpoint into model, optimizer and the RNGs, rewrite the files derived from it;
    (RunState, best weights). A checkpoint that does not fit is a UserError."""
    parts, state = saved
    path = run_dir / rundir.CHECKPOINT
    try:
        st = RunState(**{f.name: state[f.name] for f in fields(RunState)})
        if not (isinstance(st.epoch, int) and isinstance(st.updates, int)
                and isinstance(st.curves, list) and len(st.curves) == st.epoch >= 1
                and isinstance(st.best, dict)):
            raise ValueError("inconsistent run state")
        model.load_state_dict(parts["model"])
        best = SequenceModel(model.config)
        best.load_state_dict(parts["best"])
        params = optimizer_params(optimizer)
        buffers = parts.get("optimizer", {})
        if set(buffers) != {f"{i}.{k}" for i in range(len(params)) for k in ("ms", "v")}:
            raise ValueError("optimizer buffers do not match the model's parameters")
        for i, p in enumerate(params):
            for k in ("ms", "v"):
                if buffers[f"{i}.{k}"].shape != p.shape:
                    raise ValueError(f"optimizer buffer {i}.{k} has the wrong shape")
            optimizer.state[p] = {k: buffers[f"{i}.{k}"].to(p.dtype) for k in ("ms", "v")}
        torch.set_rng_state(parts["rng"]["torch"])
        rng.bit_generator.state = state["numpy_rng"]
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"{path}: not a usable checkpoint of this run ({describe(e)[:300]})") from None
    rundir.save_model(run_dir / rundir.MODEL, parts["best"], run_config)
    rundir.write_csv(run_dir / rundir.CURVES, st.curves)
    return st, parts["best"]


def run_metrics(model, fixed, st, data, run_dir, best_weights, start, stopped=None):
    """The best model's test NLL and the run's summary, written to metrics.json (with
    ``stopped`` when training ended early). Nothing is written before a completed epoch."""
    if st.best is None:
        return {"stopped": stopped} if stopped else {}
    model.load_state_dict(best_weights)
    test_m = evaluate(model, fixed["test"])
    b = st.best
    metrics = {
        "train_nll": b["train_nll"], "valid_nll": b["valid_nll"], "test_nll": test_m["nll"],
        "train_nll_per_sequence": b["train_nll_per_sequence"],
        "valid_nll_per_sequence": b["valid_nll_per_sequence"],
        "test_nll_per_sequence": test_m["nll_per_sequence"],
        "best_epoch": b["epoch"], "epochs": len(st.curves), "updates": st.updates,
        "params": model.num_params(), "recurrent_params": model.recurrent_params(),
        "head_params": model.head_params(),
        "seconds": round(time.perf_counter() - start, 3), "backend": backend_of(model),
    }
    metrics.update(per_sample(metrics, data))
    if stopped:
        metrics["stopped"] = stopped
    if not all(math.isfinite(metrics[k]) for k in ("test_nll", "test_nll_per_sequence")):
        raise NonFiniteLoss(f"test NLL of the best model is {test_m['nll']}")
    rundir.write_json(run_dir / rundir.METRICS, metrics)
    return metrics


def per_sample(metrics, data):
    """Speech: every NLL also in nats per predicted sample, beside the i.i.d. Gaussian baseline
    (same unit) that shows what the recurrence buys. Text: every NLL also in bits per
    character (one character per step). Nothing for music."""
    keys = [k for k in ("train_nll", "valid_nll", "test_nll") if k in metrics]
    if data.task.characters:
        return {k.replace("_nll", "_bits_per_char"): metrics[k] / math.log(2) for k in keys}
    k = data.task.samples_per_step
    if not k:
        return {}
    out = {f"{key}_per_sample": metrics[key] / k for key in keys}
    out["baseline_iid_gaussian_per_sample"] = data.baseline
    return out


def _as_data(config, examples):
    if isinstance(examples, Data):
        return examples
    if examples is not None:
        from .data import task_of
        return Data(examples, task_of(config.dataset))
    return load_config_data(config)


def load_config_data(config, info=None):
    """The dataset of a TrainConfig; ``info`` (a run's saved data info: normalisation,
    vocabulary) makes it the run's data exactly."""
    return load_data(config.dataset, config.data_dir, info, sample_rate=config.sample_rate,
                     steps_per_quarter=config.steps_per_quarter)


def read_run(run_dir):
    """(TrainConfig, the config.json record) of a run directory; any problem is a one-line
    UserError naming the file."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run directory not found")
    source = run_dir / rundir.CONFIG
    record = rundir.read_json(source)
    if isinstance(record, dict) and "config" not in record and isinstance(record.get("train"), dict):
        record = from_0_1(record)
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise UserError(f"{source}: not a gatedrnn run config (no \"config\" object)")
    return from_dict(TrainConfig, record["config"], str(source)), record


MODEL_KEYS_0_1 = ("cell", "variant", "backend", "hidden_size", "weight_noise", "components")


def from_0_1(record):
    """A config.json record as gatedrnn 0.1 wrote it ({"train": the settings flat, "model": the
    resolved model, "normalization", ...}) in today's layout, the same settings: the model's
    fields go inside, the fields added since take the values that 0.1 had fixed."""
    train, model = dict(record["train"]), dict(record.get("model") or {})
    for key in MODEL_KEYS_0_1:
        value = train.pop(key, None)
        model.setdefault(key, value)
    model.setdefault("weight_noise", 0.0)
    normalization = record.get("normalization")
    return {**{k: v for k, v in record.items() if k not in ("train", "model", "normalization")},
            "config": {**train, "model": model},
            "data": {"normalization": normalization} if normalization else {}}


def load_run(run_dir):
    """(TrainConfig, SequenceModel with the best weights, config.json record) of a run."""
    config, record = read_run(run_dir)
    try:
        model = new_model(config.model)
    except UserError as e:
        raise UserError(f"{Path(run_dir) / rundir.CONFIG}: {e}") from None
    state, _ = rundir.load_model(Path(run_dir) / rundir.MODEL)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"{Path(run_dir) / rundir.MODEL}: weights do not fit the config "
                        f"({str(e).splitlines()[0]})") from None
    return config, model, record


def evaluate_run(run_dir, data_dir=None):
    """Recompute train / valid / test NLL of a run's saved best model."""
    config, model, record = load_run(run_dir)
    if data_dir is not None:
        config = replace(config, data_dir=str(data_dir))
    data = load_config_data(config, record.get("data"))
    out = {}
    for split, ex in data.examples.items():
        m = evaluate(model, length_sorted_batches(ex, config.eval_batch_size))
        out[f"{split}_nll"] = m["nll"]
        out[f"{split}_nll_per_sequence"] = m["nll_per_sequence"]
    out.update(per_sample(out, data))
    return out


# `gatedrnn compare` defaults: a real comparison that finishes in minutes on 2 CPU cores.
COMPARE_DEFAULTS = {"batch_size": 16, "lr": 3e-3, "epochs": 150, "patience": 20}


def compare(base: TrainConfig, out, cells=PAPER_UNITS, datasets=None, seeds=1, log=print,
            progress=None, resume=False):
    """Train each unit on each dataset with the same settings (each unit at its Table 1 size,
    or all sized to base.model.params), with seeds base.seed .. base.seed + seeds - 1. Run
    directories are laid out as the sweep's seeds phase (rundir.run_path: OUT/runs/DATASET/
    CELL/VARIANT/seeds/trial-K for the K-th seed), so `gatedrnn report OUT` reads them. Returns
    {dataset: {cell: [metrics per seed]}} (a run that diverged is left out, its directory kept:
    the table counts it with its best model, if it finished an epoch); with ``resume``, runs
    already in their directory continue, the others start."""
    datasets = datasets or [base.dataset]
    configs = {(d, c): replace(base, dataset=d, model=replace(base.model, cell=c))   # checked now
               for d in datasets for c in cells}
    results = {}
    for dataset in datasets:
        data = load_config_data(configs[dataset, cells[0]])
        results[dataset] = {}
        for cell in cells:
            unit = configs[dataset, cell]
            log(f"== {dataset} / {cell} ({resolve(unit.model, data.task).hidden_size} units) ==")
            results[dataset][cell] = []
            for k in range(seeds):
                run_dir = rundir.run_path(out, dataset, cell, unit.model.variant, "seeds", k)
                try:
                    metrics = train(replace(unit, seed=base.seed + k), run_dir, data, log=log,
                                    progress=progress,
                                    resume=resume and bool(rundir.holds_run(run_dir)))
                except NonFiniteLoss as e:       # the others still run; its best model is kept
                    log(f"{dataset} / {cell} / seed {base.seed + k} diverged: {e}")
                    continue
                results[dataset][cell].append(metrics)
                if "stopped" in metrics:
                    return results
    return results
