"""Gradient flow through time: how much the NLL at step t depends on the hidden state k steps
before, for a run's best model and for the same model at initialisation.

    g(k) = mean over test sequences and sampled steps t >= k of || d nll_t / d h_{t-k} ||_2

h_t is the unit's hidden state after step t. For the LSTM (and CIFG) it is the output state
h, not the cell c: the gradient is the one that reaches h_{t-k} by any later path (through the
later cells included), with c_{t-k}, step t-k+1's other input, held fixed. With stacked layers
it is every layer's h together, (L, H), one norm. nll_t is the head's NLL of
step t's target in nats, as in training (inputs x_{t-1} for music and text, frames for speech),
from the zero state at t = 0; the model is in eval mode (no weight noise) and in float64.

How: each sequence is run step by step (RecurrentUnit.one_step), every h_t kept in the graph, the head
reading h_t itself, so that every path from h_j to later steps goes through it. For each sampled
step t one backward of nll_t, torch.autograd.grad(nll_t, [h_t, h_{t-1}, ..., h_{t-K}]) with
K = min(t, lags), gives d nll_t / d h_{t-k} for every k at once, with the arithmetic of the
K + 1 steps between (autograd's bookkeeping still walks the graph back to step 0). Which t:
every step of a sequence of at most ``times`` steps, else ``times`` distinct steps drawn
uniformly without replacement by numpy's default_rng([seed, sequence index]): the same steps
for every run and state on the same data. Sequences: the first
``max_sequences`` of the test split, in its order.

Cost per sequence of T steps: one forward of up to T steps, then at most ``times`` backwards
of at most lags + 1 steps each, O(T + times * lags) steps (a backward per (t, k) pair would be
O(times * lags^2)). count(k) is the number of (sequence, t) pairs with t >= k: the sampled t
are uniform, so large k rest on fewer terms.
"""
import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from . import kernels, rundir
from .errors import UserError
from .train import build_model, load_config_data, load_run

STATES = ("trained", "init")


def chosen_times(T, times, seed, sequence):
    """The steps t of a sequence of T steps whose NLL is differentiated (sorted)."""
    if T <= times:
        return list(range(T))
    rng = np.random.default_rng([seed, sequence])
    return sorted(rng.choice(T, times, replace=False).tolist())


def sequence_gradients(model, inputs, targets, steps, lags):
    """{t: (K + 1,) tensor of || d nll_t / d h_{t-k} ||, k = 0..K, K = min(t, lags)} for one
    sequence (inputs (T, I), targets (T, D) or (T,)) and the steps ``steps``. ``model`` must be
    in eval mode; the sums run in its dtype."""
    rnn, head = model.rnn, model.head
    dtype = next(model.parameters()).dtype
    x = inputs.to(dtype).unsqueeze(1)                            # (T, 1, I)
    y = targets.unsqueeze(1)                                     # (T, 1, D) or (T, 1)
    y = y if y.dtype == torch.int64 else y.to(dtype)
    hs, nll, state = [], {}, None
    wanted = set(steps)
    with torch.enable_grad():
        for t in range(max(steps) + 1):
            _, state = rnn.one_step(x[t], state)
            h = state[0] if isinstance(state, tuple) else state  # (L, 1, H): every path goes here
            hs.append(h)
            if t in wanted:
                nll[t] = head.nll(head(h[-1].unsqueeze(1)), y[t].unsqueeze(1)).sum()
        out = {}
        for t in steps:
            back = hs[t - min(t, lags):t + 1][::-1]              # h_t, h_{t-1}, ..., h_{t-K}
            grads = torch.autograd.grad(nll[t], back, retain_graph=True, allow_unused=True)
            out[t] = torch.stack([torch.zeros((), dtype=dtype) if g is None else
                                  torch.linalg.vector_norm(g) for g in grads]).detach()
    return out


def gradient_norms(model, examples, lags=200, times=32, seed=0):
    """(sums (lags + 1,), counts (lags + 1,)) over the sequences ``examples`` [(inputs,
    targets)]: sums[k] adds || d nll_t / d h_{t-k} || over every sequence and sampled t >= k
    (chosen_times), counts[k] the number of terms. A copy of ``model`` runs in eval mode and
    float64; ``model`` itself is left as it is."""
    model = copy.deepcopy(model).double().eval()
    sums, counts = np.zeros(lags + 1), np.zeros(lags + 1, np.int64)
    with kernels.threads(1):                 # one step's products are too small to share
        for n, (inputs, targets) in enumerate(examples):
            steps = chosen_times(len(inputs), times, seed, n)
            for t, norms in sequence_gradients(model, inputs, targets, steps, lags).items():
                sums[:len(norms)] += norms.numpy()
                counts[:len(norms)] += 1
    return sums, counts


def gradient_flow(run_dirs, out, lags=200, max_sequences=16, times=32, seed=0, data_dir=None,
                  log=None):
    """g(k), k = 0..lags, for the best model of each run directory and for its model at
    initialisation (rebuilt from the run's config and seed, as training built it), on the
    first ``max_sequences`` test sequences of each run's data. Writes gradflow.csv (run, cell,
    state, k, mean_grad_norm, count; k without any term is left out) and gradflow.png (one
    curve per run and state, log y) in ``out``; returns their paths."""
    run_dirs = list(run_dirs) if not isinstance(run_dirs, (str, Path)) else [run_dirs]
    if not run_dirs:
        raise UserError("give at least one run directory")
    for name, value, low in (("lags", lags, 0), ("max_sequences", max_sequences, 1),
                             ("times", times, 1), ("seed", seed, None)):
        if isinstance(value, bool) or not isinstance(value, int) or \
                (low is not None and value < low):
            expected = "an integer" if low is None else f"an integer >= {low}"
            raise UserError(f"{name} must be {expected}, got {value!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory; expected the output directory")
    with torch.random.fork_rng():           # building models draws; the caller's RNG is kept
        runs = [(run_dir, *load_run(run_dir)) for run_dir in run_dirs]   # every problem first
    data_cache, rows, curves = {}, [], []
    labels = _labels([(str(r), c.model.cell) for r, c, _, _ in runs])
    for (run_dir, config, trained, record), label in zip(runs, labels):
        if data_dir is not None:
            config = replace(config, data_dir=str(data_dir))
        info = record.get("data") or {}
        key = (config.dataset, config.data_dir, config.sample_rate, config.steps_per_quarter,
               json.dumps(info, sort_keys=True))
        if key not in data_cache:
            data_cache[key] = load_config_data(config, info).examples["test"][:max_sequences]
        examples = data_cache[key]
        with torch.random.fork_rng():                # the caller's random state is left alone
            init = build_model(config)
        for state, model in zip(STATES, (trained, init)):
            started = time.perf_counter()
            sums, counts = gradient_norms(model, examples, lags, times, seed)
            mean = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
            for k in np.flatnonzero(counts):
                rows.append({"run": str(run_dir), "cell": config.model.cell, "state": state,
                             "k": int(k), "mean_grad_norm": float(mean[k]),
                             "count": int(counts[k])})
            curves.append((label, state, np.flatnonzero(counts), mean[counts > 0]))
            if log:
                log(f"{label} {state}: {len(examples)} sequences, {counts[0]} steps t, g(0) "
                    f"{mean[0]:.3g}, g({min(lags, int(np.flatnonzero(counts)[-1]))}) "
                    f"{mean[counts > 0][-1]:.3g} ({time.perf_counter() - started:.1f} s)")
    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out / "gradflow.csv", out / "gradflow.png"
    rundir.write_csv(csv_path, rows)
    datasets = sorted({c.dataset for _, c, _, _ in runs})
    plot_flow(curves, png_path, ", ".join(datasets))
    return [csv_path, png_path]


def _labels(runs):
    """The cell name of each (run, cell), or run directory paths where cells repeat."""
    cells = [c for _, c in runs]
    return [c if cells.count(c) == 1 else f"{c} ({r})" for r, c in runs]


def plot_flow(curves, path, title):
    """g(k) against k, log y: one colour per run, solid trained, dashed at initialisation.
    Zeros (gradients below float64's range) are left out of the log scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = {"tanh": "tab:blue", "gru": "tab:orange", "lstm": "tab:green"}
    order = list(dict.fromkeys(label for label, *_ in curves))
    for label, state, ks, mean in curves:
        color = colors.get(label) or f"C{3 + order.index(label) % 7}"
        keep = mean > 0
        ax.plot(ks[keep], mean[keep], color=color, ls="-" if state == "trained" else "--",
                label=f"{label} {state}")
    ax.set_yscale("log")
    ax.set_xlabel("k (steps back)")
    ax.set_ylabel("mean || d nll_t / d h_{t-k} ||")
    ax.set_title(f"gradient flow through time: {title}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    rundir.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path
