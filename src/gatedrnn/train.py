"""The paper's training protocol (PAPER.md section 4), as small functions.

train(config, run_dir) -> metrics: RMSProp with momentum (the paper's code settings), weight
noise on W and U at every training forward pass, gradient norm rescaled to 1, learning rate
decaying linearly to 1% by the last epoch, early stopping on validation NLL with the best model
kept and used for the test NLL. NLL is in nats per time step: summed over the output dims,
averaged over all time steps of a split.
"""
import math
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from . import rundir
from .cells import CELLS, VARIANTS
from .kernels import BACKENDS
from .data import Data, load_data, task_of
from .data.batching import length_sorted_batches
from .errors import UserError
from .model import TABLE1_UNITS, ModelConfig, SequenceModel


@dataclass
class TrainConfig:
    dataset: str = "jsb"            # data.dataset_names()
    cell: str = "gru"               # tanh | gru | lstm
    variant: str = "paper"          # paper | torch
    backend: str = "fast"           # fast (numba kernels on CPU) | reference (the readable loop)
    hidden_size: int | None = None  # None: Table 1 size for the task
    lr: float = 1e-3
    epochs: int = 500               # the paper's code: at most 500
    batch_size: int = 1             # the paper's code: one sequence per update
    patience: int | None = None     # stop after this many epochs without a better valid NLL
    weight_noise: float = 0.075     # std of N(0, s^2) on W and U, training forward passes only
    clip_norm: float = 1.0          # gradient norm rescaled to this if larger
    momentum: float = 0.9           # RMSProp of the paper's code: momentum,
    rms_decay: float = 0.95         # averaging coefficient of the squared gradient,
    rms_floor: float = 0.01         # and floor on its root
    lr_final: float = 0.01          # the learning rate decays linearly to lr * lr_final by the last epoch
    eval_batch_size: int = 64
    tbptt: int | None = None        # truncated BPTT: an update every this many steps, state carried
    components: int = 20            # speech: Gaussians in the output mixture
    sample_rate: int = 8000         # speech (wav:DIR): files at other rates are resampled to it
    seed: int = 0
    data_dir: str | None = None     # directory holding the dataset files; None: env or cache

    def __post_init__(self):
        task_of(self.dataset)
        if self.cell not in CELLS:
            raise UserError(f"unknown unit {self.cell!r}; expected one of {', '.join(CELLS)}")
        if self.variant not in VARIANTS:
            raise UserError(f"unknown variant {self.variant!r}; expected one of {', '.join(VARIANTS)}")
        if self.backend not in BACKENDS:
            raise UserError(f"unknown backend {self.backend!r}; expected one of {', '.join(BACKENDS)}")
        positive = {"lr": self.lr, "epochs": self.epochs, "batch_size": self.batch_size,
                    "eval_batch_size": self.eval_batch_size, "clip_norm": self.clip_norm,
                    "rms_floor": self.rms_floor}
        if self.hidden_size is not None:
            positive["hidden_size"] = self.hidden_size
        for name in ("patience", "tbptt"):
            if getattr(self, name) is not None:
                positive[name] = getattr(self, name)
        positive["components"], positive["sample_rate"] = self.components, self.sample_rate
        for name, value in positive.items():
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise UserError(f"{name} must be a positive number, got {value!r}")
        for name in ("momentum", "rms_decay"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"{name} must lie in [0, 1), got {getattr(self, name)!r}")
        if not 0 < self.lr_final <= 1:
            raise UserError(f"lr_final must lie in (0, 1], got {self.lr_final!r}")
        from .data.speech import MAX_RATE, MIN_RATE
        if not MIN_RATE <= self.sample_rate <= MAX_RATE:
            raise UserError(f"sample_rate must lie in {MIN_RATE}..{MAX_RATE} Hz, got {self.sample_rate!r}")
        if not 0 <= self.weight_noise < math.inf:
            raise UserError(f"weight_noise must be >= 0, got {self.weight_noise!r}")

    def model_config(self):
        task = task_of(self.dataset)
        return ModelConfig(cell=self.cell, variant=self.variant,
                           hidden_size=self.hidden_size or TABLE1_UNITS[task.kind][self.cell],
                           input_size=task.input_size, output_size=task.output_size,
                           head=task.head, components=self.components,
                           weight_noise=self.weight_noise, backend=self.backend)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UserError(f"unknown config keys {sorted(unknown)}")
        return cls(**d)


class PaperRMSprop(torch.optim.Optimizer):
    """RMSProp with momentum, as in the paper's code:
        ms <- decay * ms + (1 - decay) * g^2
        v  <- momentum * v - lr * g / max(sqrt(ms), floor)
        p  <- p + v
    """

    def __init__(self, params, lr, momentum=0.9, decay=0.95, floor=0.01):
        super().__init__(params, dict(lr=lr, momentum=momentum, decay=decay, floor=floor))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
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
                p.add_(v)


class NonFiniteLoss(RuntimeError):
    pass


def lr_at(config, epoch):
    """Learning rate of a 1-based epoch: linear from lr to lr * lr_final at the last epoch."""
    frac = (epoch - 1) / max(1, config.epochs - 1)
    return config.lr * (1 - (1 - config.lr_final) * frac)


def train_step(model, optimizer, batch, clip_norm, state=None):
    """One update on one minibatch (or chunk of one, from ``state``); returns its mean NLL per
    step (with weight noise) and the final state, detached."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    nll, state = model.chunk_nll(batch.inputs, batch.targets, batch.lengths, state)
    loss = nll.sum() / batch.steps
    if not torch.isfinite(loss):
        raise NonFiniteLoss(f"loss is {loss.item()}")
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    if not torch.isfinite(norm):
        raise NonFiniteLoss(f"gradient norm is {norm.item()}")
    optimizer.step()
    return loss.item(), _detach(state)


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
    torch.manual_seed(config.seed)
    return SequenceModel(config.model_config())


def train(config: TrainConfig, run_dir, examples=None, log=print, progress=None):
    """Train one model into ``run_dir``; returns the metrics dict also written to metrics.json.

    ``examples`` (a data.Data, or {split: [(inputs, targets)]}) skips loading the dataset;
    ``log`` gets one line per epoch; ``progress`` (optional) is called as
    progress(epoch, batch, batches_per_epoch).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = _as_data(config, examples)
    examples = data.examples
    model = build_model(config)
    optimizer = PaperRMSprop(model.parameters(), config.lr, config.momentum, config.rms_decay,
                             config.rms_floor)
    rng = np.random.default_rng(config.seed)
    fixed = {s: length_sorted_batches(examples[s], config.eval_batch_size) for s in examples}
    run_config = {"train": asdict(config), "model": config.model_config().to_dict(),
                  "normalization": data.normalization, "backend": backend_of(model),
                  "torch": torch.__version__}
    rundir.write_json(run_dir / rundir.CONFIG, run_config)

    curves, best, updates, since_best = [], None, 0, 0
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(config, epoch)
        batches = length_sorted_batches(examples["train"], config.batch_size, rng)
        for i, batch in enumerate(batches):
            state = None
            for chunk in batch.chunks(config.tbptt):
                try:
                    _, state = train_step(model, optimizer, chunk, config.clip_norm, state)
                except NonFiniteLoss as e:
                    raise NonFiniteLoss(f"{e} at epoch {epoch}, update {updates + 1}; best model "
                                        f"so far kept in {run_dir}") from None
                updates += 1
            if progress:
                progress(epoch, i + 1, len(batches))
        train_m, valid_m = evaluate(model, fixed["train"]), evaluate(model, fixed["valid"])
        seconds = time.perf_counter() - start
        curves.append({"epoch": epoch, "updates": updates, "seconds": round(seconds, 3),
                       "lr": lr_at(config, epoch), "train_nll": train_m["nll"],
                       "valid_nll": valid_m["nll"]})
        improved = best is None or valid_m["nll"] < best["valid_nll"]
        if improved:
            best = {"epoch": epoch, "train_nll": train_m["nll"], "valid_nll": valid_m["nll"],
                    "train_nll_per_sequence": train_m["nll_per_sequence"],
                    "valid_nll_per_sequence": valid_m["nll_per_sequence"]}
            rundir.save_model(run_dir / rundir.MODEL, model.state_dict(), run_config)
            since_best = 0
        else:
            since_best += 1
        rundir.write_csv(run_dir / rundir.CURVES, curves)
        log(f"epoch {epoch:3d}  train {train_m['nll']:.3f}  valid {valid_m['nll']:.3f}"
            f"{'  *' if improved else ''}  ({seconds:.0f} s)")
        if config.patience and since_best >= config.patience:
            break

    state, _ = rundir.load_model(run_dir / rundir.MODEL)
    model.load_state_dict(state)
    test_m = evaluate(model, fixed["test"])
    metrics = {
        "train_nll": best["train_nll"], "valid_nll": best["valid_nll"], "test_nll": test_m["nll"],
        "train_nll_per_sequence": best["train_nll_per_sequence"],
        "valid_nll_per_sequence": best["valid_nll_per_sequence"],
        "test_nll_per_sequence": test_m["nll_per_sequence"],
        "best_epoch": best["epoch"], "epochs": len(curves), "updates": updates,
        "params": model.num_params(), "recurrent_params": model.recurrent_params(),
        "seconds": round(time.perf_counter() - start, 3), "backend": backend_of(model),
    }
    metrics.update(per_sample(metrics, data))
    rundir.write_json(run_dir / rundir.METRICS, metrics)
    return metrics


def per_sample(metrics, data):
    """Speech: every NLL also in nats per predicted sample, beside the i.i.d. Gaussian baseline
    (same unit) that shows what the recurrence buys. Nothing for music."""
    k = data.task.samples_per_step
    if not k:
        return {}
    out = {f"{key}_per_sample": metrics[key] / k for key in ("train_nll", "valid_nll", "test_nll")
           if key in metrics}
    out["baseline_iid_gaussian_per_sample"] = data.baseline
    return out


def _as_data(config, examples):
    if isinstance(examples, Data):
        return examples
    if examples is not None:
        return Data(examples, task_of(config.dataset))
    return load_data(config.dataset, config.data_dir, sample_rate=config.sample_rate)


def load_run(run_dir):
    """(TrainConfig, SequenceModel with the best weights) from a run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run directory not found")
    saved = rundir.read_json(run_dir / rundir.CONFIG)
    try:
        config = TrainConfig.from_dict(saved["train"])
        model = SequenceModel(ModelConfig(**saved["model"]))
    except (KeyError, TypeError) as e:
        raise UserError(f"{run_dir / rundir.CONFIG}: not a gatedrnn run config ({e})") from None
    state, _ = rundir.load_model(run_dir / rundir.MODEL)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"{run_dir / rundir.MODEL}: weights do not fit the config "
                        f"({str(e).splitlines()[0]})") from None
    return config, model


def evaluate_run(run_dir, data_dir=None):
    """Recompute train / valid / test NLL of a run's saved best model."""
    config, model = load_run(run_dir)
    if data_dir is not None:
        config.data_dir = str(data_dir)
    normalization = rundir.read_json(Path(run_dir) / rundir.CONFIG).get("normalization")
    data = load_data(config.dataset, config.data_dir, normalization, config.sample_rate)
    out = {}
    for split, ex in data.examples.items():
        m = evaluate(model, length_sorted_batches(ex, config.eval_batch_size))
        out[f"{split}_nll"] = m["nll"]
        out[f"{split}_nll_per_sequence"] = m["nll_per_sequence"]
    out.update(per_sample(out, data))
    return out


# `gatedrnn compare` defaults: a real comparison that finishes in minutes on 2 CPU cores.
COMPARE_DEFAULTS = {"batch_size": 16, "lr": 3e-3, "epochs": 150, "patience": 20}


def compare(base: TrainConfig, run_root, cells=tuple(CELLS), log=print, progress=None):
    """Train each unit at its Table 1 size with the same settings; {cell: metrics}."""
    data = load_data(base.dataset, base.data_dir, sample_rate=base.sample_rate)
    results = {}
    for cell in cells:
        config = replace(base, cell=cell, hidden_size=None)
        log(f"== {cell} ({config.model_config().hidden_size} units) ==")
        results[cell] = train(config, Path(run_root) / cell, data, log=log, progress=progress)
    return results
