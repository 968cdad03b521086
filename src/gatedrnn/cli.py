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


def add_train_options(p, defaults):
    from .train import TrainConfig
    d = {f.name: f.default for f in fields(TrainConfig)} | defaults
    from .data import dataset_names
    p.add_argument("--dataset", default="jsb", help=" | ".join(dataset_names()))
    p.add_argument("--variant", default=d["variant"], help="paper (default) | torch")
    p.add_argument("--backend", default=d["backend"], help="fast (default: numba kernels on "
                   "the CPU) | reference (the readable loop of cells.py)")
    p.add_argument("--hidden-size", type=int, default=d["hidden_size"],
                   help="units (default: Table 1 size)")
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
                       **extra)


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


def cmd_train(args):
    from .train import train
    config = train_config(args, cell=args.cell)
    progress = Progress(config.epochs)
    try:
        metrics = train(config, args.run_dir, log=progress.log, progress=progress.update)
    finally:
        progress.close()
    print(json.dumps(metrics, indent=2))


def cmd_compare(args):
    from .report import compare_markdown
    from .train import compare
    config = train_config(args)
    out = Path(args.out or f"runs/compare-{args.dataset}")
    progress = Progress(config.epochs)
    try:
        results = compare(config, out, cells=args.cells, log=progress.log, progress=progress.update)
    finally:
        progress.close()
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

    p = sub.add_parser("eval", help="recompute the NLLs of a run's saved best model")
    p.add_argument("run_dir")
    p.add_argument("--data-dir")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("params", help="print Table 1 with our parameter counts")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("bench", help="time our units against torch.nn's (forward + backward, "
                       "and a Nottingham training epoch)")
    p.add_argument("--units", nargs="+", choices=list(CELLS), default=list(CELLS))
    p.add_argument("--tasks", nargs="+", choices=["music", "speech"], default=["music", "speech"],
                   help="Table 1 sizes: music (88 inputs) and/or speech (20 inputs)")
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
        args.func(args)
    except UserError as e:
        print(f"gatedrnn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gatedrnn: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:
        from .train import NonFiniteLoss
        if isinstance(e, NonFiniteLoss):
            print(f"gatedrnn: error: {e}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
