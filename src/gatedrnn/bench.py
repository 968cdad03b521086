"""Timings of our units against torch.nn's fused ones, measured side by side in one process.

For each unit (paper variant) at the paper's Table 1 sizes, forward + backward over T steps of
our fast backend, our reference loop and torch.nn's unit of the same family (nn.LSTM / nn.GRU /
nn.RNN at the same hidden size), after a warm-up, in interleaved repeats; medians, and ratios
torch.nn time / ours. Throughput is also shown as a fraction of this machine's float32 matmul
peak (a large matmul at the same thread count), counting the recurrence's matmul FLOPs:
forward h U^T, backward dA U and dU, 3 * 2 * T * B * H * G*H.

Inputs: ``music`` feeds piano rolls as the paper's music models read them, binary with
``NOTES_ON`` of 88 notes on per step on average (the four datasets' training sets have 3.0-4.0),
which the fast backend projects by adding W's columns (kernels.project); ``music-dense`` feeds
uniform random inputs of the same width, where both sides pay the dense input projection;
``speech`` feeds dense frames (uniform random, 20 samples).

First, what a new process pays before its first step: loading the kernels and one small
forward + backward per unit, any compiling included (none where they were compiled at install,
kernels/aot.py). Then one training epoch of Nottingham per unit: our model on its default
backend (the fast recurrence and the compiled Bernoulli NLL, kernels.bernoulli_nll) against the
same model built on
torch.nn (nn.LSTM / nn.GRU / nn.RNN, nn.Linear, F.binary_cross_entropy_with_logits); same sizes,
batches and optimizer, no weight noise in either. The torch.nn unit is fed each padded batch
whole (TorchNNUnit); ours skips the rows of sequences that have ended (kernels.cpu._rows).
"""
import dataclasses
import datetime
import statistics
import time

import torch
from torch import nn

from .cells import CELLS
from .model import TABLE1_UNITS, ModelConfig, SequenceModel

INPUTS = {"music": 88, "music-dense": 88, "speech": 20}
TASKS = tuple(INPUTS)
NOTES_ON = 4.0   # mean notes on per step in the music microbenchmark's random piano rolls
IMPLS = ("fast", "reference", "torch.nn")


def median_ms(times):
    return 1e3 * statistics.median(times)


def matmul_peak(n=1024, repeats=5):
    """float32 FLOP/s of a large (n x n) @ (n x n) at torch's current thread count."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times)


def recurrence_flops(cell, T, B, H):
    """Matmul FLOPs of the recurrence, forward + backward (elementwise work not counted)."""
    return 3 * 2 * T * B * H * CELLS[cell].gates * H


def units(cell, I, H):
    """The three implementations timed, same sizes, float32."""
    kwargs = {"nonlinearity": "tanh"} if CELLS[cell].torch_class is nn.RNN else {}
    return {"fast": CELLS[cell](I, H, backend="fast"),
            "reference": CELLS[cell](I, H, backend="reference"),
            "torch.nn": CELLS[cell].torch_class(I, H, **kwargs)}


def forward_backward(module, x):
    out, _ = module(x)
    out.sum().backward()


def inputs(task, T, B):
    """(T, B, I) float32 inputs of ``task`` (see the module docstring)."""
    I = INPUTS[task]
    if task == "music":
        return (torch.rand(T, B, I) < NOTES_ON / I).float()
    return torch.rand(T, B, I)


def first_use_seconds(cells):
    """Seconds to load the kernels and run a first forward + backward of each unit (float32, a
    piano roll): what a new process pays before its first step, any compiling included."""
    from . import kernels
    start = time.perf_counter()
    kernels.load()
    x = inputs("music", 5, 2)
    for cell in cells:
        forward_backward(CELLS[cell](88, 8, backend="fast"), x)
    return time.perf_counter() - start


def time_units(cell, task, H, T, B, repeats, impls=IMPLS):
    """{impl: median seconds} of forward + backward, interleaved repeats after one warm-up."""
    x = inputs(task, T, B)
    mods = {k: m for k, m in units(cell, x.shape[-1], H).items() if k in impls}
    for m in mods.values():
        forward_backward(m, x)                              # warm-up (and numba compile)
    times = {k: [] for k in mods}
    for _ in range(repeats):
        for k, m in mods.items():
            t = time.perf_counter()
            forward_backward(m, x)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


class TorchNNUnit(nn.Module):
    """torch.nn's fused unit behind our units' forward signature (padding is fed through; the
    NLL masks the padded steps, as for ours)."""

    def __init__(self, cell, input_size, hidden_size):
        super().__init__()
        kwargs = {"nonlinearity": "tanh"} if CELLS[cell].torch_class is nn.RNN else {}
        self.rnn = CELLS[cell].torch_class(input_size, hidden_size, batch_first=True, **kwargs)

    def forward(self, x, state=None, *, lengths=None):
        return self.rnn(x, state)


def epoch_seconds(model, batches):
    from .train import PaperRMSprop, train_step
    optimizer = PaperRMSprop(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for batch in batches:
        train_step(model, optimizer, batch, clip_norm=1.0)
    return time.perf_counter() - start


def time_epochs(cell, examples, batch_size, repeats, seed=0):
    """{"fast" | "torch.nn": median seconds of one epoch}, interleaved."""
    from .data.batching import length_sorted_batches
    import numpy as np
    H = TABLE1_UNITS["music"][cell]
    config = ModelConfig(cell=cell, hidden_size=H, input_size=88, output_size=88)
    models = {"fast": SequenceModel(config)}
    # torch.nn throughout: the fused unit, nn.Linear and binary_cross_entropy_with_logits
    models["torch.nn"] = SequenceModel(dataclasses.replace(config, backend="reference"))
    models["torch.nn"].rnn = TorchNNUnit(cell, 88, H)
    times = {k: [] for k in models}
    for r in range(repeats):
        batches = length_sorted_batches(examples, batch_size, np.random.default_rng(seed + r))
        for k, m in models.items():
            times[k].append(epoch_seconds(m, batches))
    return {k: statistics.median(v) for k, v in times.items()}


def run(tasks=TASKS, cells=tuple(CELLS), batches=(1, 32), T=200, repeats=5,
        epoch=True, data_dir=None, epoch_batch_size=32, epoch_repeats=1, log=print):
    """Time everything and print the tables; returns the rows."""
    import numba
    from . import kernels
    threads = torch.get_num_threads()
    first_use = first_use_seconds(cells)
    blas = kernels.load()
    built = "compiled just in time, cached"
    peak = matmul_peak()
    log(f"gatedrnn bench, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: "
        f"torch {torch.__version__}, numba {numba.__version__} (kernels {built}; their BLAS: "
        f"{blas}), "
        f"{threads} torch thread(s); "
        f"float32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    log(f"first use: loading the kernels and a first forward + backward of {', '.join(cells)} "
        f"took {first_use:.2f} s\n")
    log(f"forward + backward, T = {T}, float32, paper variants; median of {repeats} interleaved "
        "repeats; ratio = torch.nn time / ours\n")
    log("| task | unit | H | B | fast ms | reference ms | torch.nn ms | torch.nn / fast "
        "| torch.nn / reference | fast % of peak |")
    log("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for task in tasks:
        for cell in cells:
            H = TABLE1_UNITS[task.split("-")[0]][cell]
            for B in batches:
                t = time_units(cell, task, H, T, B, repeats)
                flops = recurrence_flops(cell, T, B, H)
                row = {"task": task, "cell": cell, "H": H, "B": B, **t,
                       "peak_fraction": flops / t["fast"] / peak}
                rows.append(row)
                log(f"| {task} | {cell} | {H} | {B} | {1e3 * t['fast']:.1f} | "
                    f"{1e3 * t['reference']:.1f} | {1e3 * t['torch.nn']:.1f} | "
                    f"{t['torch.nn'] / t['fast']:.2f}x | {t['torch.nn'] / t['reference']:.2f}x | "
                    f"{100 * row['peak_fraction']:.1f}% |")
    if epoch:
        from .data import load_data
        examples = load_data("nottingham", data_dir).examples["train"]
        log(f"\none training epoch of Nottingham ({len(examples)} sequences, batch "
            f"{epoch_batch_size}, RMSProp, clip 1, no weight noise), median of {epoch_repeats}\n")
        log("| unit | ours (backend=fast) s | torch.nn model s | torch.nn / ours |")
        log("| --- | --- | --- | --- |")
        for cell in cells:
            t = time_epochs(cell, examples, epoch_batch_size, epoch_repeats)
            rows.append({"task": "nottingham-epoch", "cell": cell, **t})
            log(f"| {cell} | {t['fast']:.2f} | {t['torch.nn']:.2f} | "
                f"{t['torch.nn'] / t['fast']:.2f}x |")
    return rows
