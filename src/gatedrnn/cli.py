"""The `gatedrnn` command: parses arguments, builds a config, calls one library function.

User mistakes print one line, `gatedrnn: error: ...`, and exit with status 2.
"""
import argparse
import json
import os
import sys
import typing
from pathlib import Path

from .errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _value_parser(kind, optional):
    """argparse's type for a field of type ``kind`` (int, float, str), None-able: "none"."""
    def parse(text):
        if optional and text.lower() == "none":
            return None
        return kind(text)
    parse.__name__ = kind.__name__                   # argparse names it in its messages
    return parse


def _field_type(f):
    """(int | float | str | bool, optional) of a config field's annotation."""
    args = typing.get_args(f.type)
    kind = next((a for a in args if a is not type(None)), f.type) if args else f.type
    return kind, type(None) in args


def add_config_options(p, skip=(), defaults=None):
    """Every setting of TrainConfig and its ModelConfig as an option (--name-with-dashes), with
    the field's type, its default (or ``defaults``'), and its comment as help; ``skip``: fields
    this command sets itself."""
    from .config import ModelConfig, TrainConfig, field_help, nested_fields
    helps = {**field_help(TrainConfig), **field_help(ModelConfig)}
    defaults = defaults or {}
    for path, f in nested_fields(TrainConfig):
        name = path[-1]
        if name in skip:
            continue
        default = defaults.get(name, f.default_factory() if callable(f.default_factory) else f.default)
        kind, optional = _field_type(f)
        option = "--" + name.replace("_", "-")
        text = helps.get(name, "").replace("%", "%%")
        if kind is bool:
            p.add_argument(option, action=argparse.BooleanOptionalAction, default=default,
                           help=text)
        else:
            overridden = name in defaults and defaults[name] != f.default
            shown = "" if "default" in text and not overridden else f" (default: {default})"
            p.add_argument(option, type=_value_parser(kind, optional), default=default,
                           metavar=name.upper(), help=text + shown)


def config_from_args(args, **fixed):
    """The TrainConfig of parsed arguments; ``fixed``: fields the command sets itself."""
    from .config import ModelConfig, TrainConfig, nested_fields
    values = {"model": {}}
    for path, f in nested_fields(TrainConfig):
        name = path[-1]
        value = fixed[name] if name in fixed else getattr(args, name, None)
        if name not in fixed and not hasattr(args, name):
            continue
        (values["model"] if path[0] == "model" else values)[name] = value
    if values.get("data_dir"):
        values["data_dir"] = str(Path(values["data_dir"]).resolve())
    values["dataset"] = absolute_dataset(values["dataset"])
    model = ModelConfig(**values.pop("model"))
    return TrainConfig(model=model, **values)


def absolute_dataset(name):
    """A dataset named by a path (wav:DIR, midi:DIR, npz:FILE, text:FILE) with that path made
    absolute, so that the run's config.json finds the data from any directory; others as given."""
    from .data import PREFIXES
    prefix = next((p for p in PREFIXES if name.startswith(p) and len(name) > len(p)), None)
    return prefix + str(Path(name[len(prefix):]).expanduser().resolve()) if prefix else name


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
    from . import kernels
    from .train import train
    config = config_from_args(args)
    progress = Progress(config.epochs)
    try:
        with kernels.training_threads(config.batch_size):
            metrics = train(config, args.run_dir, log=progress.log, progress=progress.update,
                            resume=args.resume)
    finally:
        progress.close()
    print(json.dumps(metrics, indent=2))
    return exit_status(metrics)


def cmd_compare(args):
    from . import kernels
    from .report import records_from_run_dirs, write_results
    from .train import compare
    datasets = [absolute_dataset(d) for d in args.datasets or [args.dataset]]
    config = config_from_args(args, dataset=datasets[0])
    if args.seeds < 1:
        raise UserError(f"--seeds must be a positive integer, got {args.seeds}")
    out = Path(args.out or "runs/compare")
    progress = Progress(config.epochs)
    try:
        with kernels.training_threads(config.batch_size):
            results = compare(config, out, cells=args.cells, datasets=datasets,
                              seeds=args.seeds, log=progress.log, progress=progress.update,
                              resume=args.resume)
    finally:
        progress.close()
    stopped = [exit_status(m) for by_cell in results.values() for runs in by_cell.values()
               for m in runs if exit_status(m)]
    if stopped:
        print(f"stopped; continue with the same command and --resume (run directories in {out})")
        return stopped[0]
    print_results(write_results(out, records_from_run_dirs(out)))


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
    from .report import heads_markdown, table1_markdown, units_markdown
    print("Table 1: parameters (recurrent layer: one bias per gate block, LSTM with three diagonal "
          "peephole vectors; whole model adds the 88-way output layer)\n")
    print(table1_markdown())
    sized = f"sized to {args.params:,} parameters" if args.params else \
        "at Table 1's size (tanh, gru, lstm) or sized to Table 1's budget (the others)"
    print(f"\nEvery registered unit, {sized}; recurrent layer at 88 (music) and 20 (speech) "
          "inputs:\n")
    print(units_markdown(args.params))
    print("\nThe music output heads' parameters at Table 1's sizes (--head; the whole model is the "
          "recurrent layer plus its head):\n")
    print(heads_markdown(args.nade_hidden))


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
    from .sweep import SweepConfig, options_of, reproduce
    datasets = [absolute_dataset(d) for d in args.datasets]
    config = config_from_args(args, dataset=datasets[0], cell=args.cells[0],
                              variant=args.variants[0], lr=1e-3)
    sweep = SweepConfig(name=args.study, datasets=datasets, cells=args.cells,
                        variants=args.variants, trials=args.trials, seeds=args.seeds,
                        lr_range=tuple(args.lr_range), seed=args.seed, options=options_of(config))
    if args.workers < 0:
        raise UserError(f"--workers must be >= 0, got {args.workers}")
    progress = SweepProgress()
    try:
        status, paths = reproduce(sweep, args.out, args.storage, args.workers,
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

    before = signal.signal(signal.SIGTERM, terminate)   # tell the study the trial failed, then exit
    try:
        storage = open_storage(args.storage, args.heartbeat_interval, args.grace_period)
        ran = work(storage, args.study, Path(args.out), args.data_dir,
                   log=lambda line: print(line, flush=True), poll=args.poll)
    finally:
        signal.signal(signal.SIGTERM, before)
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
                          read_json(saved) if saved.is_file() else None, name=args.name,
                          title=args.title)
    if any((Path(args.dir) / d).is_dir() for d in ("speech", "gradflow")):   # the results root
        from .claims import write_claims
        paths.append(write_claims(args.dir, args.out))
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
        data_dir=args.data_dir, epoch_repeats=1 if args.quick else 3,
        first_use=not args.skip_first_use, reference=args.reference)


def cmd_sample(args):
    from .sample import sample_run
    paths = sample_run(args.run_dir, args.out, num=args.num, steps=args.steps, prime=args.prime,
                       temperature=args.temperature, seed=args.seed, data_dir=args.data_dir,
                       log=print)
    print("\n".join(str(p) for p in paths))


def cmd_gradflow(args):
    from .gradflow import gradient_flow
    paths = gradient_flow(args.run_dirs, args.out, lags=args.lags,
                          max_sequences=args.max_sequences, times=args.times, seed=args.seed,
                          data_dir=args.data_dir, log=print)
    print("\n".join(str(p) for p in paths))


def build_parser():
    from .cells import UNITS
    from .cells import PAPER_UNITS
    from .train import COMPARE_DEFAULTS
    from . import __version__
    parser = Parser(prog="gatedrnn", description="Recurrent units on sequence modeling, after "
                    "Chung et al. (2014): train, evaluate and compare tanh, GRU, LSTM and any "
                    "other unit at equal parameter budgets.")
    parser.add_argument("--version", action="version", version=f"gatedrnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("train", help="train one unit on one dataset")
    add_config_options(p)
    p.add_argument("--run-dir", required=True, help="where config, metrics, curves and model go")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in the run directory (same arguments)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="train several units with the same settings (each at "
                       "Table 1's size, or all sized to --params) and print tables beside the "
                       "paper's")
    add_config_options(p, skip=("cell",), defaults=COMPARE_DEFAULTS)
    p.add_argument("--cells", nargs="+", default=list(PAPER_UNITS), metavar="CELL",
                   help=f"units: {' | '.join(UNITS)} | module:Class (default: the paper's three)")
    p.add_argument("--datasets", nargs="+", metavar="DATASET",
                   help="several datasets, one after another (default: --dataset)")
    p.add_argument("--seeds", type=int, default=1,
                   help="runs of each unit, seeds --seed, --seed+1, ... (default 1)")
    p.add_argument("--out", help="where the table, figures and run directories go (default "
                   "runs/compare; `gatedrnn report OUT` rebuilds them)")
    p.add_argument("--resume", action="store_true", help="continue each unit's interrupted run")
    p.set_defaults(func=cmd_compare)

    from .data import MUSIC
    from .sweep import LR_RANGE, SWEEP_DEFAULTS
    p = sub.add_parser("reproduce", help="Table 2 and Figures 2-3 with the paper's protocol: an lr "
                       "search, then seeds, on Optuna (local workers, or many machines)")
    p.add_argument("--datasets", nargs="+", default=list(MUSIC))
    p.add_argument("--cells", nargs="+", default=list(PAPER_UNITS), metavar="CELL",
                   help=f"units: {' | '.join(UNITS)} | module:Class (default: the paper's three)")
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
    add_config_options(p, skip=("dataset", "cell", "variant", "lr"), defaults=SWEEP_DEFAULTS)
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

    p = sub.add_parser("report", help="rebuild the tables and figures from run directories (and, "
                       "for a results directory with speech/ or gradflow/, claims.md)")
    p.add_argument("dir", help="a reproduce or compare --out directory (or its runs/)")
    p.add_argument("--out", help="where to write (default: DIR)")
    p.add_argument("--name", default="table2", help="the tables' file name, NAME.md and "
                   "NAME.json (default table2)")
    p.add_argument("--title", help="the table's title (default: Table 2's)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("eval", help="recompute the NLLs of a run's saved best model")
    p.add_argument("run_dir")
    p.add_argument("--data-dir")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sample", help="draw sequences from a run's best model: MIDI (music), WAV "
                       "(speech) or text, each with a figure")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="directory for the samples and samples.json")
    p.add_argument("--num", type=int, default=4, help="sequences to draw (default 4)")
    p.add_argument("--steps", type=int, help="steps to draw after the prime (default: 200 for "
                   "music, one second of audio for speech, 500 characters for text)")
    p.add_argument("--prime", type=int, default=0, help="start from the first K steps of a test "
                   "sequence, and write its same span beside the sample (default 0)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="1 draws from the model; lower is more conservative (default 1)")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same files")
    p.add_argument("--data-dir", help="the run's dataset files on this machine (for --prime)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("gradflow", help="the norm of the gradient of the NLL at step t with "
                       "respect to the hidden state at step t - k, trained and at initialisation")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--lags", type=int, default=200, help="largest k (default 200)")
    p.add_argument("--out", default="gradflow", help="where gradflow.csv and gradflow.png go "
                   "(default gradflow)")
    p.add_argument("--max-sequences", type=int, default=16,
                   help="test sequences per run, the first ones (default 16)")
    p.add_argument("--times", type=int, default=32, help="steps t per sequence, drawn at random "
                   "without replacement (all of a shorter sequence; default 32)")
    p.add_argument("--seed", type=int, default=0, help="which steps t are drawn (default 0)")
    p.add_argument("--data-dir", help="the runs' dataset files on this machine")
    p.set_defaults(func=cmd_gradflow)

    p = sub.add_parser("params", help="print Table 1 with our parameter counts, and every "
                       "registered unit's size at the budget")
    p.add_argument("--params", type=int, help="size every unit to this many recurrent parameters")
    p.add_argument("--nade-hidden", type=int, help="the nade head's hidden units (default 150)")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("bench", help="time our units against torch.nn's at its best thread "
                       "count (forward + backward, a Nottingham training epoch, first use)")
    p.add_argument("--units", nargs="+", choices=list(UNITS), default=list(PAPER_UNITS))
    from .bench import TASKS
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS),
                   help="Table 1 sizes: music (88 inputs, piano rolls), music-dense (88 random "
                   "inputs), speech (20 inputs); default all")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    p.add_argument("--steps", type=int, help="time steps (default 200; 100 with --quick)")
    p.add_argument("--repeats", type=int, help="interleaved repeats (default 7; 3 with --quick)")
    p.add_argument("--quick", action="store_true", help="fewer repeats and steps, one epoch")
    p.add_argument("--reference", action="store_true",
                   help="also time our reference loop for the paper's units")
    p.add_argument("--skip-epoch", action="store_true", help="no Nottingham training epoch")
    p.add_argument("--skip-first-use", action="store_true",
                   help="no first-use timing (new processes with an empty and a filled cache)")
    p.add_argument("--data-dir", help="directory holding Nottingham.mat (default "
                   "$GATEDRNN_DATA_DIR, else the download cache)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("data", help="datasets")
    data_sub = p.add_subparsers(dest="data_command", required=True, parser_class=Parser)
    f = data_sub.add_parser("fetch", help="download datasets into the cache (checksums pinned)")
    f.add_argument("--dataset", default="all")
    f.set_defaults(func=cmd_data_fetch)
    return parser


def main(argv=None):
    if os.getcwd() not in sys.path:     # --cell module:Class finds modules here, as python -m does
        sys.path.insert(0, os.getcwd())
    args = build_parser().parse_args(argv)
    try:
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
