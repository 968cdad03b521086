"""Timings of our units against torch.nn's at its best, measured side by side in one process.

Forward + backward over T steps of a unit at the paper's Table 1 sizes, through a Linear output
layer and a loss (piano rolls: the Bernoulli NLL, ours compiled, torch.nn's
F.binary_cross_entropy_with_logits; speech: the squared error of 10 predicted samples), after a
warm-up, in interleaved repeats; medians. Ours runs at its own default, the command line's: as
many of torch's threads as the batch can use (kernels.threads_for: one per MIN_ROWS rows, so
batch 1 on one); torch.nn's fused unit of the same family (nn.RNN /
nn.GRU / nn.LSTM, the torch variant's equations) runs at that count and at one thread, and the
ratio is against the faster of the two: torch.nn at its best on this machine. A unit with no
torch.nn twin (mut1, mgu, cifg, minGRU, minLSTM) is timed against its own reference loop, which
for minGRU / minLSTM shows the parallel scan against the sequential loop.

Inputs: ``music`` feeds piano rolls as the music models read them, binary with ``NOTES_ON`` of
88 notes on per step on average (the four datasets' training sets have 3.0-4.0), which the
fast backend projects by adding W's columns (kernels/binary.py); ``music-dense`` feeds uniform
random inputs of the same width, where both sides pay the dense input projection; ``speech``
feeds dense frames (uniform random, 20 samples).

Then one training epoch of Nottingham per unit: our model on its default backend against the
same model built on torch.nn (nn.LSTM / nn.GRU / nn.RNN, nn.Linear,
F.binary_cross_entropy_with_logits) at one thread and at torch's count; same sizes, batches and
optimizer, no weight noise in either. And first use: a new process's first forward + backward of
each unit with an empty kernel cache (numba compiling) and again with the cache filled.
"""
import dataclasses
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

from .cells import PAPER_UNITS, UNITS
from .kernels.scan import MIN_ROWS
from .model import SequenceModel, default_hidden, resolve
from .config import ModelConfig

INPUTS = {"music": 88, "music-dense": 88, "speech": 20}
TASKS = tuple(INPUTS)
NOTES_ON = 4.0   # mean notes on per step in the music microbenchmark's random piano rolls
OUTPUTS = {"music": 88, "music-dense": 88, "speech": 10}


def hidden_size(cell, task):
    return default_hidden(cell, task.split("-")[0], INPUTS[task])[0]


def inputs(task, T, B):
    """(T, B, I) float32 inputs and (T, B, D) targets of ``task`` (see the module docstring)."""
    I, D = INPUTS[task], OUTPUTS[task]
    if task == "speech":
        return torch.rand(T, B, I), torch.randn(T, B, D)
    x = (torch.rand(T, B, I) < NOTES_ON / I).float() if task == "music" else torch.rand(T, B, I)
    return x, (torch.rand(T, B, D) < NOTES_ON / D).float()


class Timed(nn.Module):
    """A unit with its output layer and loss, as one forward + backward."""

    def __init__(self, unit, task, H, ours):
        super().__init__()
        self.unit, self.head = unit, nn.Linear(H * getattr(unit, "directions", 1), OUTPUTS[task])
        self.task, self.ours = task, ours

    def step(self, x, y):
        from .heads import bernoulli_nll
        logits = self.head(self.unit(x)[0])
        if self.task == "speech":
            loss = (logits - y).pow(2).sum()
        elif self.ours:
            loss = bernoulli_nll(logits, y).sum()
        else:
            loss = F.binary_cross_entropy_with_logits(logits, y, reduction="sum")
        loss.backward()


def contenders(cell, task, H, reference):
    """{name: (Timed, threads or None: torch's default)} timed for one unit."""
    I, cls = INPUTS[task], UNITS[cell]
    out = {"fast": (Timed(cls(I, H, backend="fast"), task, H, True), None)}
    if reference or cls.torch_class is None:
        out["reference"] = (Timed(cls(I, H, backend="reference"), task, H, True), None)
    if cls.torch_class is not None:
        kwargs = {"nonlinearity": "tanh"} if cls.torch_class is nn.RNN else {}
        theirs = Timed(cls.torch_class(I, H, **kwargs), task, H, False)
        out["torch.nn 1"] = (theirs, 1)
        out["torch.nn N"] = (theirs, None)
    return out


def time_interleaved(runs, repeats, threads):
    """{name: median seconds} of runs {name: (fn, thread count or None)}: one warm-up each, then
    ``repeats`` rounds, each running every fn once at its thread count."""
    times = {k: [] for k in runs}
    for r in range(repeats + 1):
        for k, (fn, n) in runs.items():
            torch.set_num_threads(n or threads)
            t = time.perf_counter()
            fn()
            if r:
                times[k].append(time.perf_counter() - t)
    torch.set_num_threads(threads)
    return {k: statistics.median(v) for k, v in times.items()}


def time_units(cell, task, H, T, B, repeats, threads, reference=False):
    from .kernels import threads_for
    x, y = inputs(task, T, B)
    ours = threads_for(B)                        # what the command line trains on
    runs = {k: ((lambda m=m: m.step(x, y)), ours if k in ("fast", "reference") and n is None else n)
            for k, (m, n) in contenders(cell, task, H, reference).items()}
    return time_interleaved(runs, repeats, threads)


class TorchNNUnit(nn.Module):
    """torch.nn's fused unit behind our units' forward signature (padding is fed through; the
    NLL masks the padded steps, as for ours)."""

    def __init__(self, cell, input_size, hidden_size):
        super().__init__()
        cls = UNITS[cell].torch_class
        kwargs = {"nonlinearity": "tanh"} if cls is nn.RNN else {}
        self.rnn = cls(input_size, hidden_size, batch_first=True, **kwargs)

    def forward(self, x, state=None, *, lengths=None):
        return self.rnn(x, state)


def epoch_seconds(model, batches):
    from .config import TrainConfig
    from .train import PaperRMSprop, train_step
    optimizer = PaperRMSprop(model.parameters(), lr=1e-3)
    config = TrainConfig()
    start = time.perf_counter()
    for batch in batches:
        train_step(model, optimizer, batch, config)
    return time.perf_counter() - start


def time_epochs(cell, examples, batch_size, repeats, threads, seed=0):
    """{"fast" | "torch.nn 1" | "torch.nn N": median seconds of one epoch}, interleaved."""
    import numpy as np
    from .data import MUSIC_TASK
    from .data.batching import length_sorted_batches
    config = resolve(ModelConfig(cell=cell, weight_noise=0.0), MUSIC_TASK)
    ours = SequenceModel(config)
    runs = {"fast": (ours, None)}
    if UNITS[cell].torch_class is not None:
        # torch.nn throughout: the fused unit, nn.Linear and binary_cross_entropy_with_logits
        theirs = SequenceModel(dataclasses.replace(config, backend="reference"))
        theirs.rnn = TorchNNUnit(cell, 88, config.hidden_size)
        runs.update({"torch.nn 1": (theirs, 1), "torch.nn N": (theirs, None)})
    times = {k: [] for k in runs}
    for r in range(repeats):
        batches = length_sorted_batches(examples, batch_size, np.random.default_rng(seed + r))
        for k, (m, n) in runs.items():
            torch.set_num_threads(n or threads)
            times[k].append(epoch_seconds(m, batches))
    torch.set_num_threads(threads)
    return {k: statistics.median(v) for k, v in times.items()}


FIRST_USE = """
import time, torch
start = time.perf_counter()
from gatedrnn.bench import Timed, inputs, hidden_size
from gatedrnn.cells import UNITS
x, y = inputs("music", 5, 2)
Timed(UNITS["{cell}"](88, 8, backend="fast"), "music", 8, True).step(x, y)
print(time.perf_counter() - start)
"""


def first_use_seconds(cell):
    """(seconds of a new process's first forward + backward of ``cell`` with an empty kernel
    cache, the same with the cache filled): imports, numba compiling or loading, the step."""
    out = []
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for _ in range(2):
            r = subprocess.run([sys.executable, "-c", FIRST_USE.format(cell=cell)], env=env,
                               capture_output=True, text=True, timeout=600)
            if r.returncode != 0:
                raise RuntimeError(f"first-use measurement failed: {r.stderr[-500:]}")
            out.append(float(r.stdout.strip().splitlines()[-1]))
    return tuple(out)


def ratio(times):
    """torch.nn at its best (the faster thread count), or the reference loop, over ours."""
    best = min(v for k, v in times.items() if k.startswith("torch.nn")) if any(
        k.startswith("torch.nn") for k in times) else times["reference"]
    return best / times["fast"]


def run(tasks=TASKS, cells=PAPER_UNITS, batches=(1, 32), T=200, repeats=7,
        epoch=True, data_dir=None, epoch_batch_size=32, epoch_repeats=3, first_use=True,
        reference=False, log=print):
    """Time everything and print the tables; returns the rows."""
    from . import kernels
    threads = torch.get_num_threads()
    info = kernels.info()
    log(f"gatedrnn bench, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: "
        f"torch {torch.__version__}, numba {info['numba']} (kernels' BLAS: {info['blas']}); "
        f"{os.cpu_count()} CPUs; ours at torch's {threads} thread(s) where the batch can use "
        f"them (one per {MIN_ROWS} rows: batch 1 on one), torch.nn at 1 and at {threads} "
        "thread(s)\n")
    rows = []
    if first_use:
        log("first use: a new process's first forward + backward (imports included), kernel "
            "cache empty (compiling) and filled (a later process)\n")
        log("| unit | empty cache s | filled cache s |")
        log("| --- | --- | --- |")
        for cell in cells:
            fresh, cached = first_use_seconds(cell)
            rows.append({"task": "first-use", "cell": cell, "fresh": fresh, "cached": cached})
            log(f"| {cell} | {fresh:.1f} | {cached:.1f} |")
        log("")
    log(f"forward + backward through the output layer and loss, T = {T}, float32, paper "
        f"variants (torch.nn: its own unit); median of {repeats} interleaved repeats; ratio = "
        "torch.nn at its faster thread count (else our reference loop) / ours\n")
    log(f"| task | unit | H | B | ours ms | reference ms | torch.nn 1 thread ms | torch.nn "
        f"{threads} threads ms | ratio |")
    log("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for task in tasks:
        for cell in cells:
            H = hidden_size(cell, task)
            for B in batches:
                t = time_units(cell, task, H, T, B, repeats, threads, reference)
                rows.append({"task": task, "cell": cell, "H": H, "B": B, **t, "ratio": ratio(t)})
                ms = {k: f"{1e3 * t[k]:.1f}" if k in t else "-" for k in
                      ("fast", "reference", "torch.nn 1", "torch.nn N")}
                log(f"| {task} | {cell} | {H} | {B} | {ms['fast']} | {ms['reference']} | "
                    f"{ms['torch.nn 1']} | {ms['torch.nn N']} | {ratio(t):.2f}x |")
    if epoch:
        from .data import load_data
        examples = load_data("nottingham", data_dir).examples["train"]
        log(f"\none training epoch of Nottingham ({len(examples)} sequences, batch "
            f"{epoch_batch_size}, RMSProp, clip 1, no weight noise), median of {epoch_repeats}\n")
        log(f"| unit | ours s | torch.nn 1 thread s | torch.nn {threads} threads s | ratio |")
        log("| --- | --- | --- | --- | --- |")
        for cell in cells:
            if UNITS[cell].torch_class is None:
                continue
            t = time_epochs(cell, examples, epoch_batch_size, epoch_repeats, threads)
            rows.append({"task": "nottingham-epoch", "cell": cell, **t, "ratio": ratio(t)})
            log(f"| {cell} | {t['fast']:.2f} | {t['torch.nn 1']:.2f} | {t['torch.nn N']:.2f} | "
                f"{ratio(t):.2f}x |")
    return rows
