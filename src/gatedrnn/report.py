"""Tables built from results: ours beside the paper's Table 1 and Table 2."""
import math
from .model import table1_rows, unit_rows

# Table 2 of the paper: (train, test) NLL in nats per time step.
PAPER_TABLE2 = {
    "nottingham": {"tanh": (3.22, 3.13), "gru": (2.79, 3.23), "lstm": (3.08, 3.20)},
    "jsb": {"tanh": (8.82, 9.10), "gru": (6.94, 8.54), "lstm": (8.15, 8.67)},
    "musedata": {"tanh": (5.64, 6.23), "gru": (5.06, 5.99), "lstm": (5.18, 6.23)},
    "pianomidi": {"tanh": (5.64, 9.03), "gru": (4.93, 8.82), "lstm": (6.49, 9.03)},
    # Ubisoft A and B, unreleased: beside FSDD (short and long sequences) for the ranking only;
    # the values are negative log-densities that depend on an unstated amplitude scaling.
    "fsdd": {"tanh": (6.29, 6.44), "gru": (2.31, 3.59), "lstm": (1.44, 2.70)},
    "fsdd-long": {"tanh": (7.61, 7.62), "gru": (0.38, 0.88), "lstm": (0.80, 1.26)},
}
PAPER_DATASET = {"fsdd": "Ubisoft A", "fsdd-long": "Ubisoft B"}


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def table1_markdown(input_size=88):
    rows = []
    for r in table1_rows(input_size):
        rows.append([r["task"], r["cell"], r["units"], r["paper"], f"{r['recurrent_at_paper_inputs']:,}",
                     r["inputs"], f"{r['recurrent']:,}", f"{r['model']:,}" if r["model"] else "-"])
    header = ["task", "unit", "units", "paper (printed)", "recurrent @ 100 / 20 inputs",
              "our inputs", "recurrent (ours)", "whole model (ours)"]
    return markdown_table(header, rows)


def units_markdown(params=None):
    """Every registered unit's size per task (``gatedrnn params``)."""
    rows = [[r["cell"], r["task"], r["units"], r["inputs"], f"{r['recurrent']:,}", r["sized_by"],
             r["doc"]] for r in unit_rows(params=params)]
    return markdown_table(["unit", "task", "units", "inputs", "recurrent params", "sized by",
                           "what it is"], rows)


def compare_markdown(dataset, results):
    """results: {cell: metrics dict}. Ours, beside the paper's Table 2 row where ``dataset`` is
    one of its datasets; speech also per sample, text also in bits per character."""
    paper = PAPER_TABLE2.get(dataset)
    header = ["unit", "params", "train", "valid", "test",
              *(["paper train", "paper test"] if paper else []), "best epoch", "seconds"]
    rows = []
    for cell, m in results.items():
        row = [cell, f"{m['params']:,}", f"{m['train_nll']:.2f}", f"{m['valid_nll']:.2f}",
               f"{m['test_nll']:.2f}"]
        if paper:
            row += [_fmt(x) for x in paper.get(cell, (None, None))]
        rows.append(row + [m["best_epoch"], f"{m['seconds']:.0f}"])
    speech = all("test_nll_per_sample" in m for m in results.values()) and results
    if speech:
        base = next(iter(results.values()))["baseline_iid_gaussian_per_sample"]["test"]
        header += ["test per sample", "i.i.d. Gaussian per sample"]
        for row, m in zip(rows, results.values()):
            row += [f"{m['test_nll_per_sample']:.3f}", f"{base:.3f}"]
    text = all("test_bits_per_char" in m for m in results.values()) and results
    if text:
        header += [f"{s} bits/char" for s in ("train", "valid", "test")]
        for row, m in zip(rows, results.values()):
            row += [f"{m[f'{s}_bits_per_char']:.3f}" for s in ("train", "valid", "test")]
    return markdown_table(header, rows)


def _fmt(x):
    return "-" if x is None else f"{x:.2f}"


# ---------------------------------------------------------------------------------- Table 2
# A record is one finished run: {dataset, cell, variant, phase ("lr" | "seeds"), lr, seed, trial,
# run_dir, config, metrics}, or one that diverged (a non-finite loss or gradient): metrics None
# and "diverged" the error; it is listed beside the learning rates tried, never averaged.
# sweep.records() builds them from the Optuna storage, records_from_run_dirs() from the run
# directories alone; both feed the same table.

RESULT_FIELDS = ("dataset", "cell", "variant", "test_nll_mean", "test_nll_std", "valid_nll_mean",
                 "train_nll_mean", "seeds", "lr", "batch_size", "epochs", "seconds")


def record(dataset, cell, variant, phase, lr, seed, trial, run_dir, config, metrics,
           diverged=None):
    """One record (see above); ``diverged``: the error of a run that diverged (metrics None)."""
    out = {"dataset": dataset, "cell": cell, "variant": variant, "phase": phase, "lr": lr,
           "seed": seed, "trial": trial, "run_dir": run_dir, "config": config, "metrics": metrics}
    if diverged is not None:
        out.update(metrics=None, diverged=diverged)
    return out


NLL_KEYS = ("train_nll", "valid_nll", "test_nll")


def records_from_run_dirs(root, warn=None):
    """Records of every finished run under ROOT/runs/<dataset>/<cell>/<variant>/<phase>/trial-N
    (ROOT may also be the runs directory itself). A run without metrics.json, or one stopped by
    a signal (a killed attempt, retried elsewhere), is left out; one that diverged is a record
    with metrics None, as in the sweep's storage. A run whose files cannot be read, or whose
    metrics hold an NLL that is not a finite number, is left out with one line to ``warn``
    (default: stderr) naming the file."""
    import sys
    from pathlib import Path
    from . import rundir
    from .errors import UserError
    from .train import read_run
    warn = warn or (lambda line: print(line, file=sys.stderr))
    root = Path(root)
    runs = root / "runs" if (root / "runs").is_dir() else root
    out = []
    for metrics_file in sorted(runs.glob("*/*/*/*/trial-*/" + rundir.METRICS)):
        run = metrics_file.parent
        try:
            config, _ = read_run(run)
            metrics = rundir.read_json(metrics_file)
            if not isinstance(metrics, dict):
                raise UserError(f"{metrics_file}: not a JSON object")
        except UserError as e:
            warn(f"gatedrnn: warning: left out {run}: {e}")
            continue
        stopped = metrics.get("stopped") or {}
        if stopped and stopped.get("reason") != "non-finite":
            continue
        if not stopped:
            bad = [k for k in NLL_KEYS if not _finite(metrics.get(k))]
            if bad:
                warn(f"gatedrnn: warning: left out {run}: {metrics_file} holds "
                     f"{bad[0]} = {metrics.get(bad[0])!r}, expected a finite number")
                continue
        out.append(record(config.dataset, config.model.cell, config.model.variant,
                          run.parent.name, config.lr, config.seed, int(run.name.split("-")[1]),
                          str(run.resolve()), config.to_dict(), metrics,
                          diverged=stopped.get("error", "non-finite") if stopped else None))
    return out


def _finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def aggregate(records):
    """One row per (dataset, cell, variant): the lr with the best validation NLL in the lr phase
    (mean over its runs), then mean and std (sample std, n - 1) over the seeds phase's runs at
    that lr, one per seed (a retried slot counts once: its lowest trial number)."""
    import statistics
    groups = {}
    for r in records:
        groups.setdefault((r["dataset"], r["cell"], r["variant"]), []).append(r)
    rows = []
    for (dataset, cell, variant), recs in groups.items():
        diverged = sorted({r["lr"] for r in recs if r.get("diverged") and r["phase"] == "lr"})
        recs = [r for r in recs if not r.get("diverged")]
        if not recs:
            continue                      # every run diverged: nothing to report
        by_lr = {}
        for r in recs:
            if r["phase"] == "lr":
                by_lr.setdefault(r["lr"], []).append(r["metrics"]["valid_nll"])
        candidates = sorted((lr, statistics.fmean(v)) for lr, v in by_lr.items())
        best_lr = min(candidates, key=lambda c: c[1])[0] if candidates else None
        candidates = sorted(candidates + [(lr, None) for lr in diverged if lr not in by_lr])
        per_seed = {}
        for r in sorted(recs, key=lambda r: r["trial"], reverse=True):
            if r["phase"] == "seeds" and (best_lr is None or math.isclose(r["lr"], best_lr, rel_tol=1e-9)):
                per_seed[r["seed"]] = r
        runs = [per_seed[s] for s in sorted(per_seed)]
        row = {"dataset": dataset, "cell": cell, "variant": variant, "seeds": len(runs),
               "lr": runs[0]["lr"] if runs else best_lr, "lr_candidates": candidates}
        for split in ("train", "valid", "test"):
            values = [r["metrics"][f"{split}_nll"] for r in runs]
            row[f"{split}_nll_mean"] = statistics.fmean(values) if values else None
            row[f"{split}_nll_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        c = (runs or recs)[0]["config"]
        row.update(batch_size=c["batch_size"], max_epochs=c["epochs"], patience=c["patience"],
                   weight_noise=c["model"]["weight_noise"],
                   epochs=statistics.fmean(r["metrics"]["epochs"] for r in runs) if runs else None,
                   best_epoch=statistics.fmean(r["metrics"]["best_epoch"] for r in runs) if runs else None,
                   seconds=statistics.fmean(r["metrics"]["seconds"] for r in runs) if runs else None,
                   params=runs[0]["metrics"]["params"] if runs else None,
                   seed_list=[r["seed"] for r in runs], run_dirs=[r["run_dir"] for r in runs])
        paper = PAPER_TABLE2.get(dataset, {}).get(cell)
        row["paper_train_nll"], row["paper_test_nll"] = paper if paper else (None, None)
        row["best_run"] = min(runs, key=lambda r: r["metrics"]["valid_nll"])["run_dir"] if runs else None
        rows.append(row)
    order = {name: i for i, name in enumerate(PAPER_TABLE2)}
    cells = {"tanh": 0, "gru": 1, "lstm": 2}
    rows.sort(key=lambda r: (order.get(r["dataset"], 99), r["dataset"], cells.get(r["cell"], 9),
                             r["cell"], r["variant"]))
    return rows


def table2_markdown(rows, settings=None):
    """Ours (mean ± std over seeds) beside the paper's Table 2, with the settings that made it."""
    settings = settings or {}
    done = [r for r in rows if r["seeds"]]
    lines = ["# Table 2: average negative log-likelihood, nats per time step (lower is better)", ""]
    if done:
        r0 = done[0]
        lrs = sorted({lr for r in rows for lr, _ in r["lr_candidates"]})
        drawn = (f"log-uniform over [{settings['lr_range'][0]:g}, {settings['lr_range'][1]:g}]"
                 if settings.get("lr_range") else "log-uniform")
        lines += [f"Protocol: {len(lrs)} learning rates drawn {drawn} (tried "
                  f"{', '.join(f'{lr:.2e}' for lr in lrs)}), one run each; the best by "
                  f"validation NLL trained again with {r0['seeds']} seeds (seeds "
                  f"{', '.join(map(str, r0['seed_list']))}); mean ± sample std over those seeds. "
                  f"Batch {r0['batch_size']}, at most {r0['max_epochs']} epochs, early stopping "
                  f"patience {r0['patience']}, weight noise {r0['weight_noise']}, 88 inputs. "
                  "`epochs` and `seconds` are per run, averaged over seeds.", ""]
    header = ["dataset", "unit", "variant", "params", "lr", "seeds", "train", "valid", "test",
              "paper train", "paper test", "epochs", "seconds"]
    body = []
    for r in done:
        body.append([r["dataset"], r["cell"], r["variant"], f"{r['params']:,}", f"{r['lr']:.2e}", r["seeds"],
                     *(f"{r[f'{s}_nll_mean']:.2f} ± {r[f'{s}_nll_std']:.2f}"
                       for s in ("train", "valid", "test")),
                     _fmt(r["paper_train_nll"]), _fmt(r["paper_test_nll"]),
                     f"{r['epochs']:.0f}", f"{r['seconds']:.0f}"])
    lines.append(markdown_table(header, body))
    pending = [r for r in rows if not r["seeds"]]
    if pending:
        lines += ["", "Not finished (no seeds-phase run yet): " +
                  ", ".join(f"{r['dataset']}/{r['cell']}/{r['variant']}" for r in pending)]
    lines += ["", "Validation NLL of every learning rate tried (lr phase, one run each; "
              "diverged: the loss or gradient went non-finite, no result):", ""]
    lines.append(markdown_table(["dataset", "unit", "variant", "lr: valid NLL"], [
        [r["dataset"], r["cell"], r["variant"],
         ", ".join(f"{lr:.2e}: " + ("diverged" if v is None else f"{v:.2f}")
                   for lr, v in r["lr_candidates"])] for r in rows]))
    speech = [d for d in dict.fromkeys(r["dataset"] for r in done) if d in PAPER_DATASET]
    if speech:
        lines += ["", "Paper columns for " + ", ".join(f"{d} are {PAPER_DATASET[d]}" for d in speech)
                  + " (compare the ranking only)."]
    if settings.get("study"):
        lines += ["", f"Optuna sweep `{settings['study']}`."]
    return "\n".join(lines) + "\n"


def plot_curves(rows, path, dataset):
    """Figure 2/3 style: train and validation NLL (log y) against epochs (top) and wall-clock
    seconds (bottom), for the best-validation seed run of each unit on ``dataset``."""
    import csv
    from pathlib import Path
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter
    from . import rundir
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharey="col", squeeze=False)
    colors = {"tanh": "tab:blue", "gru": "tab:orange", "lstm": "tab:green"}
    plotted = 0
    for r in rows:
        if r["dataset"] != dataset or not r["best_run"]:
            continue
        curves_file = Path(r["best_run"]) / rundir.CURVES
        if not curves_file.is_file():
            continue
        with open(curves_file, newline="") as f:
            curve = list(csv.DictReader(f))
        label = r["cell"] + ("" if r["variant"] == "paper" else f" ({r['variant']})")
        for row_i, x_key in enumerate(("epoch", "seconds")):
            x = [float(c[x_key]) for c in curve]
            for col, split in enumerate(("train", "valid")):
                axes[row_i][col].plot(x, [float(c[f"{split}_nll"]) for c in curve], label=label,
                                      color=colors.get(r["cell"]))
        plotted += 1
    for row_i, xlabel in enumerate(("epochs", "wall-clock seconds")):
        for col, split in enumerate(("train", "valid")):
            ax = axes[row_i][col]
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{split} NLL (nats per step)")
            ax.grid(True, which="both", alpha=0.3)
            if plotted:
                ax.legend()
    fig.suptitle(f"{dataset}: learning curves of the best validation runs")
    fig.tight_layout()
    rundir.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return plotted


def write_results(out, records, settings=None):
    """table2.md, table2.json and curves-<dataset>.png in ``out``; settings (the sweep's, if
    known) are kept in sweep.json so that `gatedrnn report` writes the same header."""
    import re
    from pathlib import Path
    from . import rundir
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if settings is None and (out / "sweep.json").is_file():
        settings = rundir.read_json(out / "sweep.json")
    if settings:
        rundir.write_json(out / "sweep.json", settings)
    rows = aggregate(records)
    json_rows = [{k: r[k] for k in RESULT_FIELDS} | {k: v for k, v in r.items() if k not in RESULT_FIELDS}
                 for r in rows if r["seeds"]]
    paths = [out / "table2.md", out / "table2.json"]
    rundir.write_text(paths[0], table2_markdown(rows, settings))
    rundir.write_json(paths[1], json_rows)
    for dataset in dict.fromkeys(r["dataset"] for r in rows if r["seeds"]):
        path = out / f"curves-{re.sub(r'[^A-Za-z0-9_.-]', '_', dataset)}.png"
        if plot_curves(rows, path, dataset):
            paths.append(path)
    return paths
