"""The `gatedrnn` command: parses arguments, builds a config, calls one library function.

User mistakes print one line, `gatedrnn: error: ...`, and exit with status 2.
"""
import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from .errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_train_options(p, defaults, sweep=False):
    """The TrainConfig options; ``sweep``: without --dataset, --variant and --lr (swept)."""
    from .train import TrainConfig
    d = {f.name: f.default for f in fields(TrainConfig)} | defaults
    from .data import dataset_names
    if not sweep:
        p.add_argument("--dataset", default="jsb", help=" | ".join(dataset_names()))
        p.add_argument("--variant", default=d["variant"], help="paper (default) | torch")
    p.add_argument("--backend", default=d["backend"], help="fast (default: numba kernels on "
                   "the CPU) | reference (the readable loop of cells.py)")
    p.add_argument("--hidden-size", type=int, default=d["hidden_size"],
                   help="units (default: Table 1 size)")
    if not sweep:
        p.add_argument("--lr", type=float, default=d["lr"], help=f"learning rate (default {d['lr']})")
    p.add_argument("--epochs", type=int, default=d["epochs"], help=f"at most (default {d['epochs']})")
    p.add_argument("--batch-size", type=int, default=d["batch_size"],
                   help=f"sequences per update, length-sorted (default {d['batch_size']})")
    p.add_argument("--patience", type=int, default=d["patience"],
                   help="stop after this many epochs without a better validation NLL")
    p.add_argument("--weight-noise", type=float, default=d["weight_noise"],
                   help=f"std on W and U while training (default {d['weight_noise']})")
    p.add_argument("--tbptt", type=int, default=d["tbptt"],
                   help="truncated backpropagation through time: an update every N steps, "
                   "the state carried across (for long sequences; default off)")
    p.add_argument("--components", type=int, default=d["components"],
                   help=f"speech: Gaussians in the output mixture (default {d['components']})")
    p.add_argument("--sample-rate", type=int, default=d["sample_rate"],
                   help=f"speech wav:DIR: resample files to this rate (default {d['sample_rate']} Hz)")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--deterministic", action="store_true",
                   help="torch.use_deterministic_algorithms and one thread: the same seed gives "
                   "bit-identical results")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in the run directory (same arguments)")
    p.add_argument("--data-dir", help="directory holding the dataset files (music: the .mat or "
                   ".pickle files; fsdd: the directory holding recordings/; default: "
                   "$GATEDRNN_DATA_DIR, else the download cache)")


def train_config(args, **extra):
    from .train import TrainConfig
    return TrainConfig(dataset=args.dataset, variant=args.variant, backend=args.backend,
                       hidden_size=args.hidden_size,
                       lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                       patience=args.patience, weight_noise=args.weight_noise, seed=args.seed,
                       tbptt=args.tbptt, components=args.components, sample_rate=args.sample_rate,
                       data_dir=str(Path(args.data_dir).resolve()) if args.data_dir else None,
                       deterministic=args.deterministic, **extra)


class Progress:
    """A progress bar on a terminal; plain log lines otherwise."""

    def __init__(self, epochs):
        self.tty = sys.stderr.isatty()
        self.epochs, self.bar = epochs, None

    def log(self, line):
        if self.bar is not None:
            self.bar.set_postfix_str(line.split("(")[0].strip())
            if line.startswith("=="):
                self.close()
                print(line, flush=True)
        else:
            print(line, flush=True)

    def update(self, epoch, i, n):
        if not self.tty:
            return
        if self.bar is None:
            from tqdm import tqdm
            self.bar = tqdm(total=self.epochs * n, unit="upd", leave=False, dynamic_ncols=True)
        self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def exit_status(metrics):
    """0, or 128 + the signal number when a signal stopped training (130 for Ctrl-C)."""
    import signal
    reason = metrics.get("stopped", {}).get("reason", "")
    return 128 + signal.Signals[reason].value if reason.startswith("SIG") else 0


def cmd_train(args):
    from .train import train
    config = train_config(args, cell=args.cell)
    progress = Progress(config.epochs)
    try:
        metrics = train(config, args.run_dir, log=progress.log, progress=progress.update,
                        resume=args.resume)
    finally:
        progress.close()
    print(json.dumps(metrics, indent=2))
    return exit_status(metrics)


def cmd_compare(args):
    from .report import compare_markdown
    from .train import compare
    config = train_config(args)
    out = Path(args.out or f"runs/compare-{args.dataset}")
    progress = Progress(config.epochs)
    try:
        results = compare(config, out, cells=args.cells, log=progress.log,
                          progress=progress.update, resume=args.resume)
    finally:
        progress.close()
    stopped = [exit_status(m) for m in results.values() if exit_status(m)]
    if stopped:
        print(f"stopped; continue with the same command and --resume (run directories in {out})")
        return stopped[0]
    from .report import PAPER_DATASET
    paper = f"; the paper's columns are {PAPER_DATASET[args.dataset]}" if args.dataset in PAPER_DATASET else ""
    print(f"\n{args.dataset}: NLL in nats per time step (run directories in {out}{paper})\n")
    print(compare_markdown(args.dataset, results))


def cmd_eval(args):
    from .rundir import METRICS, read_json
    from .train import evaluate_run
    result = evaluate_run(args.run_dir, args.data_dir)
    saved = Path(args.run_dir) / METRICS
    recorded = read_json(saved) if saved.exists() else {}
    for key, value in result.items():
        was = recorded.get(key)
        print(f"{key:24s} {value:.4f}" + (f"   (metrics.json: {was:.4f})" if was is not None else ""))


def cmd_params(args):
    from .report import table1_markdown
    print("Table 1: parameters (recurrent layer: one bias per gate block, LSTM with three diagonal "
          "peephole vectors; whole model adds the 88-way output layer)\n")
    print(table1_markdown())


def cmd_data_fetch(args):
    from .data import MUSIC, SPEECH
    from .data.fetch import fetch_fsdd, fetch_music
    names = [*MUSIC, "fsdd"] if args.dataset == "all" else [args.dataset]
    for name in names:
        if name in MUSIC:
            print(fetch_music(name))
        elif name in SPEECH:
            print(fetch_fsdd())
        else:
            raise UserError(f"unknown dataset {name!r}; expected all or one of "
                            f"{', '.join([*MUSIC, *SPEECH])}")


class SweepProgress:
    """Sweep status: one line per change when not on a terminal, one rewritten line on it."""

    def __init__(self):
        self.tty = sys.stderr.isatty()

    def __call__(self, status):
        import time
        line = f"[{time.strftime('%H:%M:%S')}] {status.line()}"
        if self.tty:
            width = shutil_width()
            print("\r" + line[:width - 1].ljust(width - 1), end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self):
        if self.tty:
            print(file=sys.stderr, flush=True)


def shutil_width():
    import shutil
    return shutil.get_terminal_size((120, 20)).columns


def print_results(paths):
    """The files reproduce / report wrote, then table2.md (the first of them)."""
    print("\n".join(str(p) for p in paths))
    print()
    print(paths[0].read_text(), end="")


def cmd_reproduce(args):
    from dataclasses import asdict
    from .sweep import SWEPT, SweepConfig, reproduce
    args.dataset, args.variant, args.lr = args.datasets[0], args.variants[0], 1e-3
    base = asdict(train_config(args))
    options = {k: v for k, v in base.items() if k not in SWEPT}
    config = SweepConfig(name=args.study, datasets=args.datasets, cells=args.cells,
                         variants=args.variants, trials=args.trials, seeds=args.seeds,
                         lr_range=tuple(args.lr_range), seed=args.seed, options=options)
    if args.workers < 0:
        raise UserError(f"--workers must be >= 0, got {args.workers}")
    progress = SweepProgress()
    try:
        status, paths = reproduce(config, args.out, args.storage, args.workers,
                                  args.heartbeat_interval, args.grace_period, args.data_dir,
                                  on_status=progress, poll=args.poll)
    finally:
        progress.close()
    print_results(paths)


def cmd_worker(args):
    import signal
    from .sweep import open_storage, work

    def terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)   # tell the study the trial failed, then exit
    storage = open_storage(args.storage, args.heartbeat_interval, args.grace_period)
    ran = work(storage, args.study, Path(args.out), args.data_dir,
               log=lambda line: print(line, flush=True), poll=args.poll)
    print(f"worker done: {ran} trials run here", flush=True)


def cmd_report(args):
    from .report import records_from_run_dirs, write_results
    found = records_from_run_dirs(args.dir)
    if not found:
        raise UserError(f"{args.dir}: no finished run directories under runs/<dataset>/<cell>/"
                        "<variant>/<phase>/trial-N")
    from .rundir import read_json
    saved = Path(args.dir) / "sweep.json"          # the sweep's settings, if reproduce wrote them
    paths = write_results(Path(args.out or args.dir), found,
                          read_json(saved) if saved.is_file() else None)
    print_results(paths)


def add_storage_options(p):
    p.add_argument("--heartbeat-interval", type=int, default=30,
                   help="seconds between a running trial's heartbeats (default 30)")
    p.add_argument("--grace-period", type=int, default=120,
                   help="a running trial without a heartbeat for this long is failed and "
                   "retried (default 120 s)")


def cmd_bench(args):
    from .bench import run
    repeats = args.repeats or (3 if args.quick else 7)
    run(tasks=args.tasks, cells=args.units, batches=args.batches, T=args.steps or
        (100 if args.quick else 200), repeats=repeats, epoch=not args.skip_epoch,
        data_dir=args.data_dir, epoch_repeats=1 if args.quick else 3)


def build_parser():
    from .cells import CELLS
    from .train import COMPARE_DEFAULTS
    parser = Parser(prog="gatedrnn", description="Gated recurrent units on sequence modeling "
                    "(Chung et al. 2014): train, evaluate and compare tanh, GRU and LSTM.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("train", help="train one unit on one dataset")
    p.add_argument("--cell", required=True, choices=list(CELLS))
    add_train_options(p, {})
    p.add_argument("--run-dir", required=True, help="where config, metrics, curves and model go")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="train the three units at Table 1 sizes and print a table "
                       "beside the paper's")
    add_train_options(p, COMPARE_DEFAULTS)
    p.add_argument("--cells", nargs="+", choices=list(CELLS), default=list(CELLS))
    p.add_argument("--out", help="root of the run directories (default runs/compare-DATASET)")
    p.set_defaults(func=cmd_compare)

    from .data import MUSIC
    from .sweep import LR_RANGE, SWEEP_DEFAULTS
    p = sub.add_parser("reproduce", help="Table 2 and Figures 2-3 with the paper's protocol: an lr "
                       "search, then seeds, on Optuna (local workers, or many machines)")
    p.add_argument("--datasets", nargs="+", default=list(MUSIC))
    p.add_argument("--cells", nargs="+", choices=list(CELLS), default=list(CELLS))
    p.add_argument("--variants", nargs="+", default=["paper"], help="paper | torch (default paper)")
    p.add_argument("--trials", type=int, default=10, help="learning rates per unit (default 10)")
    p.add_argument("--seeds", type=int, default=3, help="runs of the best lr (default 3)")
    p.add_argument("--lr-range", type=float, nargs=2, default=list(LR_RANGE), metavar=("LOW", "HIGH"),
                   help=f"log-uniform learning-rate range (default {LR_RANGE[0]:g} {LR_RANGE[1]:g})")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes on this machine (default 1; 0: only wait for workers "
                   "started elsewhere with gatedrnn worker)")
    p.add_argument("--storage", help="journal:PATH or a database URL (postgresql://user@host/db); "
                   "default: journal:OUT/optuna-journal.log")
    p.add_argument("--study", default="table2", help="sweep name in the storage (default table2)")
    p.add_argument("--out", default="results", help="results and run directories (default results)")
    add_train_options(p, SWEEP_DEFAULTS, sweep=True)
    add_storage_options(p)
    p.add_argument("--poll", type=float, default=2.0,
                   help="seconds between looks at the sweep's status (default 2)")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("worker", help="run trials of a sweep created by gatedrnn reproduce (start "
                       "one or more on every machine)")
    p.add_argument("--storage", required=True, help="the sweep's storage (journal:PATH or URL)")
    p.add_argument("--study", default="table2", help="sweep name (default table2)")
    p.add_argument("--out", default="results", help="where run directories go (default results)")
    p.add_argument("--data-dir", help="dataset files on this machine (default: the sweep's)")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between looks for work")
    add_storage_options(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("report", help="rebuild table2.md/.json and the figures from run directories")
    p.add_argument("dir", help="a reproduce --out directory (or its runs/)")
    p.add_argument("--out", help="where to write (default: DIR)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("eval", help="recompute the NLLs of a run's saved best model")
    p.add_argument("run_dir")
    p.add_argument("--data-dir")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("params", help="print Table 1 with our parameter counts")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("bench", help="time our units against torch.nn's (forward + backward, "
                       "and a Nottingham training epoch)")
    p.add_argument("--units", nargs="+", choices=list(CELLS), default=list(CELLS))
    from .bench import TASKS
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS),
                   help="Table 1 sizes: music (88 inputs, piano rolls), music-dense (88 random "
                   "inputs), speech (20 inputs); default all")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    p.add_argument("--steps", type=int, help="time steps (default 200; 100 with --quick)")
    p.add_argument("--repeats", type=int, help="interleaved repeats (default 7; 3 with --quick)")
    p.add_argument("--quick", action="store_true", help="fewer repeats and steps, one epoch")
    p.add_argument("--skip-epoch", action="store_true", help="no Nottingham training epoch")
    p.add_argument("--data-dir", help="directory holding Nottingham.mat (default "
                   "$GATEDRNN_DATA_DIR, else the download cache)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("data", help="datasets")
    data_sub = p.add_subparsers(dest="data_command", required=True, parser_class=Parser)
    f = data_sub.add_parser("fetch", help="download datasets into the cache (checksums pinned)")
    f.add_argument("--dataset", default="all")
    f.set_defaults(func=cmd_data_fetch)
    return parser


def set_threads():
    """Torch threads: $GATEDRNN_THREADS, default 1. The paper's models are tiny, and on a few
    cores one thread is faster than several (intra-op threads cost more than they share)."""
    import os
    import torch
    value = os.environ.get("GATEDRNN_THREADS", "1")
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"GATEDRNN_THREADS={value!r}; expected a positive integer")
    torch.set_num_threads(int(value))


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        set_threads()
        status = args.func(args)
    except UserError as e:
        print(f"gatedrnn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gatedrnn: interrupted", file=sys.stderr)
        return 130
    except (OSError, MemoryError) as e:                 # the machine's, not the user's: status 1
        from .errors import describe
        print(f"gatedrnn: error: {describe(e)}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        from .train import NonFiniteLoss
        if isinstance(e, NonFiniteLoss):
            print(f"gatedrnn: error: {e}", file=sys.stderr)
            return 1
        raise
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
