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
# Boulanger-Lewandowski, Bengio and Vincent (2012), test NLL in nats per step: the best exact
# likelihoods on the music sets (RNN-RBM's is an AIS estimate). Beside runs with a NADE head.
PUBLISHED_MUSIC = {
    "RNN-NADE (HF)": {"jsb": 5.56, "nottingham": 2.31, "musedata": 5.60, "pianomidi": 7.05},
    "RNN-RBM": {"jsb": 6.27, "nottingham": 2.39, "musedata": 6.01, "pianomidi": 7.09},
    "RNN (HF)": {"jsb": 8.58, "nottingham": 3.89, "musedata": 7.19, "pianomidi": 7.66},
}


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


def heads_markdown(nade_hidden=None):
    """The music output heads' parameter counts at each paper unit's Table 1 size (``gatedrnn
    params``): the paper's Bernoulli layer and the RNN-NADE head with ``nade_hidden`` units."""
    from .heads import BernoulliHead, NADEHead
    from .model import TABLE1_UNITS
    nade_hidden = NADEHead.DEFAULT_NADE_HIDDEN if nade_hidden is None else nade_hidden
    count = lambda head: sum(p.numel() for p in head.parameters())    # noqa: E731
    rows = [[cell, units, f"{count(BernoulliHead(units, 88)):,}",
             f"{count(NADEHead(units, 88, nade_hidden)):,}"]
            for cell, units in TABLE1_UNITS["music"].items()]
    return markdown_table(["unit", "units", "bernoulli", f"nade ({nade_hidden} hidden)"], rows)


def _fmt(x):
    return "-" if x is None else f"{x:.2f}"


def plus_minus(row, key):
    """mean ± std of ``key`` in an aggregated row, or - where the runs lack it."""
    if row.get(f"{key}_mean") is None:
        return "-"
    if row["seeds"] < 2:
        return f"{row[f'{key}_mean']:.2f}"
    return f"{row[f'{key}_mean']:.2f} ± {row[f'{key}_std']:.2f}"


# ---------------------------------------------------------------------------------- Table 2
# A record is one finished run: {dataset, cell, variant, phase ("lr" | "seeds"), lr, seed, trial,
# run_dir, config, metrics}, or one that diverged (a non-finite loss or gradient): metrics None
# and "diverged" the error; it is listed beside the learning rates tried, never averaged.
# sweep.records() builds them from the Optuna storage, records_from_run_dirs() from the run
# directories alone; both feed the same table.

RESULT_FIELDS = ("dataset", "cell", "variant", "params", "recurrent_params", "head", "head_params",
                 "test_nll_mean", "test_nll_std", "test_nll_per_sequence_mean",
                 "test_nll_per_sequence_std", "valid_nll_mean", "train_nll_mean", "seeds", "lr",
                 "batch_size", "epochs", "seconds")


def record(dataset, cell, variant, phase, lr, seed, trial, run_dir, config, metrics,
           diverged=None):
    """One record (see above); ``diverged``: the error of a run that diverged (metrics None)."""
    out = {"dataset": dataset, "cell": cell, "variant": variant, "phase": phase, "lr": lr,
           "seed": seed, "trial": trial, "run_dir": run_dir, "config": config, "metrics": metrics}
    if diverged is not None:       # metrics, where there are any: the best model before it did
        out["diverged"] = diverged
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
        # a seed that diverged counts with the best model it had before (the protocol keeps the
        # best-validation model); a learning rate that diverged is not chosen
        recs = [r for r in recs if not r.get("diverged") or (
            r["phase"] == "seeds" and r["metrics"] and _finite(r["metrics"].get("test_nll")))]
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
        for key in ("train_nll", "valid_nll", "test_nll", "test_nll_per_sequence",
                    "test_nll_per_sample", "test_bits_per_char"):
            values = [r["metrics"][key] for r in runs if key in r["metrics"]]
            row[f"{key}_mean"] = statistics.fmean(values) if values else None
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        row["diverged_seeds"] = sum(1 for r in runs if r.get("diverged"))
        baseline = runs[0]["metrics"].get("baseline_iid_gaussian_per_sample") if runs else None
        row["baseline_iid_gaussian_per_sample"] = baseline["test"] if baseline else None
        c = (runs or recs)[0]["config"]
        row.update(batch_size=c["batch_size"], max_epochs=c["epochs"], patience=c["patience"],
                   weight_noise=c["model"]["weight_noise"],
                   epochs=statistics.fmean(r["metrics"]["epochs"] for r in runs) if runs else None,
                   best_epoch=statistics.fmean(r["metrics"]["best_epoch"] for r in runs) if runs else None,
                   seconds=statistics.fmean(r["metrics"]["seconds"] for r in runs) if runs else None,
                   params=runs[0]["metrics"]["params"] if runs else None,
                   recurrent_params=runs[0]["metrics"].get("recurrent_params") if runs else None,
                   head=c["model"].get("head"),
                   head_params=runs[0]["metrics"].get("head_params") if runs else None,
                   hidden_size=c["model"].get("hidden_size"), objective=c.get("objective", "mean"),
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


def _stopping(patience):
    return "no early stopping" if patience is None else f"early stopping patience {patience}"


def by_unit_markdown(done):
    """Test NLL (mean over seeds) with a row per dataset and a column per unit, the best of
    each row in bold (all of them where they tie at two decimals): lines to add, none for a
    table of one unit."""
    units = list(dict.fromkeys((r["cell"], r["variant"]) for r in done))
    if len(units) < 2:
        return []
    names = [cell if variant == "paper" else f"{cell} ({variant})" for cell, variant in units]
    body = []
    for dataset in dict.fromkeys(r["dataset"] for r in done):
        test = {(r["cell"], r["variant"]): round(r["test_nll_mean"], 2) for r in done
                if r["dataset"] == dataset and r.get("test_nll_mean") is not None}
        best = min(test.values(), default=None)
        body.append([dataset, *("-" if u not in test else
                                f"**{test[u]:.2f}**" if test[u] == best else f"{test[u]:.2f}"
                                for u in units)])
    return ["", "Test NLL by unit (mean over seeds; the best of each dataset in bold):", "",
            markdown_table(["dataset", *names], body)]


def table2_markdown(rows, settings=None, title=None):
    """Ours (mean ± std over seeds) beside the paper's Table 2, with the settings that made it."""
    settings = settings or {}
    done = [r for r in rows if r["seeds"]]
    title = title or "Table 2: average negative log-likelihood, nats per time step (lower is better)"
    lines = [f"# {title}", ""]
    if done and not any(r["lr_candidates"] for r in rows):
        r0 = done[0]
        seeds = (f"seed {r0['seed_list'][0]}" if r0["seeds"] == 1 else
                 f"seeds {', '.join(map(str, r0['seed_list']))}; mean ± sample std over them")
        lines += [f"Protocol: every unit at learning rate {r0['lr']:.2e} (no search), "
                  f"{seeds}. Batch {r0['batch_size']}, at most "
                  f"{r0['max_epochs']} epochs, {_stopping(r0['patience'])}, weight "
                  f"noise {r0['weight_noise']}, objective {r0['objective']}. `test per "
                  "sequence` averages within each sequence, then over sequences. `epochs` and "
                  "`seconds` are per run, averaged over seeds.", ""]
    elif done:
        r0 = done[0]
        lrs = sorted({lr for r in rows for lr, _ in r["lr_candidates"]})
        drawn = (f"log-uniform over [{settings['lr_range'][0]:g}, {settings['lr_range'][1]:g}]"
                 if settings.get("lr_range") else "log-uniform")
        lines += [f"Protocol: {len(lrs)} learning rates drawn {drawn} (tried "
                  f"{', '.join(f'{lr:.2e}' for lr in lrs)}), one run each; the best by "
                  f"validation NLL trained again with {r0['seeds']} seeds (seeds "
                  f"{', '.join(map(str, r0['seed_list']))}); mean ± sample std over those seeds. "
                  f"Batch {r0['batch_size']}, at most {r0['max_epochs']} epochs, "
                  f"{_stopping(r0['patience'])}, weight noise {r0['weight_noise']}, objective "
                  f"{r0['objective']}. `test` averages the NLL over all time steps "
                  "of the split (each step counts once); `test per sequence` first averages "
                  "within each sequence, then over sequences (long sequences count less). "
                  "`epochs` and `seconds` are per run, averaged over seeds.", ""]
    paper = any(r["paper_test_nll"] is not None for r in done)
    header = ["dataset", "unit", "variant", "units", "params (recurrent)", "lr", "seeds", "train",
              "valid", "test", "test per sequence", *(["paper train", "paper test"] * paper),
              "epochs", "seconds"]
    body = []
    for r in done:
        seeds = str(r["seeds"]) + (f" ({r['diverged_seeds']} diverged)" if r["diverged_seeds"] else "")
        recurrent = f" ({r['recurrent_params']:,})" if r.get("recurrent_params") else ""
        body.append([r["dataset"], r["cell"], r["variant"], r.get("hidden_size") or "-",
                     f"{r['params']:,}{recurrent}", f"{r['lr']:.2e}", seeds,
                     *(plus_minus(r, k) for k in ("train_nll", "valid_nll", "test_nll",
                                           "test_nll_per_sequence")),
                     *([_fmt(r["paper_train_nll"]), _fmt(r["paper_test_nll"])] * paper),
                     f"{r['epochs']:.0f}", f"{r['seconds']:.0f}"])
    extra = [(key, label) for key, label in (
        ("test_nll_per_sample", "test per sample"), ("test_bits_per_char", "test bits per char"))
        if any(r.get(f"{key}_mean") is not None for r in done)]
    if any(r.get("baseline_iid_gaussian_per_sample") is not None for r in done):
        extra.append(("baseline_iid_gaussian_per_sample", "i.i.d. Gaussian per sample"))
    for key, label in extra:
        header.append(label)
        for row, r in zip(body, done):
            value = r.get(key)
            row.append(f"{value:.3f}" if isinstance(value, float) else plus_minus(r, key))
    lines.append(markdown_table(header, body))
    lines += by_unit_markdown(done)
    if any(r["diverged_seeds"] for r in done):
        lines += ["", "A diverged seed (its loss or gradient went non-finite) counts with the "
                  "best-validation model it had before, as the protocol keeps that model."]
    pending = [r for r in rows if not r["seeds"]]
    if pending:
        lines += ["", "Not finished (no seeds-phase run yet): " +
                  ", ".join(f"{r['dataset']}/{r['cell']}/{r['variant']}" for r in pending)]
    if any(r["lr_candidates"] for r in rows):
        lines += ["", "Validation NLL of every learning rate tried (lr phase, one run each; "
                  "diverged: the loss or gradient went non-finite, no result):", ""]
        lines.append(markdown_table(["dataset", "unit", "variant", "lr: valid NLL"], [
            [r["dataset"], r["cell"], r["variant"],
             ", ".join(f"{lr:.2e}: " + ("diverged" if v is None else f"{v:.2f}")
                       for lr, v in r["lr_candidates"])] for r in rows]))
    nade = [r for r in done if r.get("head") == "nade" and r["dataset"] in PUBLISHED_MUSIC["RNN-NADE (HF)"]]
    if nade:
        lines += ["", "Against published test NLLs: Boulanger-Lewandowski et al. (2012; RNN-RBM's "
                  "is an estimate) and the paper's best unit:", ""]
        lines.append(markdown_table(
            ["dataset", "ours (unit, head parameters)", "test", *PUBLISHED_MUSIC, "paper's best unit"],
            [[r["dataset"], f"{r['cell']}, nade {r['head_params']:,}", plus_minus(r, "test_nll"),
              *(f"{by[r['dataset']]:.2f}" for by in PUBLISHED_MUSIC.values()),
              f"{min(t for _, t in PAPER_TABLE2[r['dataset']].values()):.2f}"] for r in nade]))
    speech = [d for d in dict.fromkeys(r["dataset"] for r in done) if d in PAPER_DATASET]
    if speech:
        lines += ["", "Paper columns for " + ", ".join(f"{d} are {PAPER_DATASET[d]}" for d in speech)
                  + " (compare the ranking only)."]
    if settings.get("study"):
        lines += ["", f"Optuna sweep `{settings['study']}`."]
    return "\n".join(lines) + "\n"


def plot_curves(rows, path, dataset):
    """Figure 2/3 style: train and validation NLL against epochs (top) and wall-clock seconds
    (bottom), for the best-validation seed run of each unit on ``dataset``; the NLL axis is
    logarithmic where every value is positive (music), linear otherwise (speech densities)."""
    import csv
    import itertools
    from pathlib import Path
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter
    from . import rundir
    from .cells import PAPER_UNITS
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharey="col", squeeze=False)
    colors = {"tanh": "tab:blue", "gru": "tab:orange", "lstm": "tab:green"}     # the paper's
    others = itertools.cycle(["tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray",
                              "tab:olive", "tab:cyan", "black"])   # every other unit, dashed
    plotted, positive = 0, True
    for r in rows:
        if r["dataset"] != dataset or not r["best_run"]:
            continue
        curves_file = Path(r["best_run"]) / rundir.CURVES
        if not curves_file.is_file():
            continue
        with open(curves_file, newline="") as f:
            curve = list(csv.DictReader(f))
        label = r["cell"] + ("" if r["variant"] == "paper" else f" ({r['variant']})")
        if r["cell"] not in colors:
            colors[r["cell"]] = next(others)
        style = dict(label=label, color=colors[r["cell"]],
                     linestyle="-" if r["cell"] in PAPER_UNITS else "--")
        for row_i, x_key in enumerate(("epoch", "seconds")):
            x = [float(c[x_key]) for c in curve]
            for col, split in enumerate(("train", "valid")):
                y = [float(c[f"{split}_nll"]) for c in curve]
                positive = positive and min(y) > 0
                axes[row_i][col].plot(x, y, **style)
        plotted += 1
    for row_i, xlabel in enumerate(("epochs", "wall-clock seconds")):
        for col, split in enumerate(("train", "valid")):
            ax = axes[row_i][col]
            if positive:
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


def write_results(out, records, settings=None, name="table2", title=None):
    """NAME.md, NAME.json and curves-<dataset>.png in ``out``; settings (the sweep's, if
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

    def here(path):           # a run directory under OUT as a path relative to it, so that the
        try:                  # JSON reads the same from any clone
            return Path(path).resolve().relative_to(out.resolve()).as_posix()
        except ValueError:
            return str(path)
    json_rows = [{k: r[k] for k in RESULT_FIELDS} | {k: v for k, v in r.items() if k not in RESULT_FIELDS}
                 | {"run_dirs": [here(d) for d in r["run_dirs"]], "best_run": here(r["best_run"])}
                 for r in rows if r["seeds"]]
    paths = [out / f"{name}.md", out / f"{name}.json"]
    rundir.write_text(paths[0], table2_markdown(rows, settings, title))
    rundir.write_json(paths[1], json_rows)
    for dataset in dict.fromkeys(r["dataset"] for r in rows if r["seeds"]):
        path = out / f"curves-{re.sub(r'[^A-Za-z0-9_.-]', '_', dataset)}.png"
        if plot_curves(rows, path, dataset):
            paths.append(path)
    return paths
