"""The study's conclusions as claims, each checked against committed runs: claims.md.

Chung et al. (2014) conclude from their Table 2 and Figures 2-3 that gated units beat the tanh
unit, most of all on raw speech; that on music the three are close and the GRU is often best;
that the GRU converges faster than the LSTM, per update and per second; that neither gated unit is
better in general. ``write_claims(root)`` reads the run directories under ``root`` (the music
sweep in ROOT/runs, the speech runs in ROOT/speech/*/runs, the gradient flow in
ROOT/gradflow/*/gradflow.csv, what exists of them), states each claim with its evidence (mean ± std over
seeds) and a verdict: holds, mixed, or does not hold. A claim without its evidence says so.
"""
import csv
import math
import statistics
from pathlib import Path

from . import rundir
from .cells import PAPER_UNITS as PAPER
from .report import aggregate, markdown_table, plus_minus, records_from_run_dirs


def write_claims(root, out=None):
    """claims.md in ``out`` (default ``root``) from the runs under ``root``; its path."""
    root = Path(root)
    music = _rows(root / "runs", quiet=True)
    speech = [r for d in sorted((root / "speech").glob("*")) if (d / "runs").is_dir()
              for r in _rows(d / "runs", quiet=True)]
    flow = _gradflow(sorted((root / "gradflow").glob("*/gradflow.csv")))
    sections = [
        speech_claim(speech), music_claim(music), convergence_claim(music),
        cost_claim(music), gradflow_claim(flow), neither_claim(music + speech)]
    lines = ["# The study's claims, checked", "",
             "Each claim of Chung et al. (2014), the evidence from the runs committed under "
             "`results/` (test NLL in nats per step, mean ± std over seeds; lower is better), and "
             "a verdict. Rebuilt by `gatedrnn report results`; the commands that made the runs "
             "are in `results/README.md`.", ""]
    for n, (claim, evidence, verdict) in enumerate(sections, 1):
        lines += [f"## {n}. {claim}", "", evidence, "", f"**Verdict: {verdict}.**", ""]
    path = Path(out or root) / "claims.md"
    rundir.write_text(path, "\n".join(lines))
    return path


def _rows(runs, quiet=False):
    if not runs.is_dir():
        return []
    recs = records_from_run_dirs(runs, warn=(lambda line: None) if quiet else None)
    return [r for r in aggregate(recs) if r["seeds"] and r["cell"] in PAPER
            and r["variant"] == "paper"]


def _by(rows):
    """{dataset: {cell: row}}"""
    out = {}
    for r in rows:
        out.setdefault(r["dataset"], {})[r["cell"]] = r
    return out


def _better(a, b, key="test_nll"):
    """1 if row a is better than b beyond both standard deviations, -1 if worse, 0 if not
    separated."""
    gap = b[f"{key}_mean"] - a[f"{key}_mean"]
    margin = a[f"{key}_std"] + b[f"{key}_std"]
    return 0 if abs(gap) <= margin else (1 if gap > 0 else -1)


def _table(by, datasets):
    body = [[d, *(plus_minus(by[d][c], "test_nll") if c in by[d] else "-" for c in PAPER)]
            for d in datasets]
    return markdown_table(["dataset", "tanh", "GRU", "LSTM"], body)


def speech_claim(rows):
    claim = "On raw speech the gated units (GRU, LSTM) are far better than the tanh unit."
    by = _by(rows)
    data = [d for d in by if all(c in by[d] for c in PAPER)]
    if not data:
        return claim, "No committed speech runs of all three units.", "not checked"
    gaps = []
    for d in data:
        for c in ("gru", "lstm"):
            gaps.append((by[d]["tanh"]["test_nll_mean"] - by[d][c]["test_nll_mean"],
                         _better(by[d][c], by[d]["tanh"])))
    evidence = (_table(by, data) + "\n\nFSDD stands in for the unreleased Ubisoft sets (a "
                "different corpus and amplitude scale: compare the ranking). The gated units' "
                "test NLL is lower than tanh's by " +
                ", ".join(f"{g:.2f}" for g, _ in gaps) + " nats per step (GRU, LSTM per dataset).")
    separated = sum(s == 1 for _, s in gaps)
    verdict = ("holds" if separated == len(gaps) and min(g for g, _ in gaps) > 1.0 else
               "mixed" if separated else "does not hold")
    return claim, evidence, verdict


def music_claim(rows):
    claim = ("On polyphonic music the three units are close, and the GRU is best on most "
             "datasets.")
    by = _by(rows)
    data = [d for d in by if all(c in by[d] for c in PAPER)]
    if not data:
        return claim, "No committed music runs of all three units.", "not checked"
    best = {d: min(PAPER, key=lambda c: by[d][c]["test_nll_mean"]) for d in data}
    spread = {d: max(by[d][c]["test_nll_mean"] for c in PAPER) -
              min(by[d][c]["test_nll_mean"] for c in PAPER) for d in data}
    relative = {d: spread[d] / min(by[d][c]["test_nll_mean"] for c in PAPER) for d in data}
    evidence = (_table(by, data) + "\n\nBest unit per dataset: " +
                ", ".join(f"{d} {best[d]}" for d in data) + ". Spread between the best and the "
                "worst unit: " + ", ".join(f"{d} {spread[d]:.2f} ({100 * relative[d]:.0f}%)"
                                           for d in data) + ".")
    gru_best = sum(b == "gru" for b in best.values())
    close = all(r <= 0.10 for r in relative.values())
    verdict = ("holds" if gru_best > len(data) / 2 and close else
               "mixed" if gru_best > len(data) / 2 or close else "does not hold")
    return claim, evidence, verdict


def _curves(run_dir):
    with open(Path(run_dir) / rundir.CURVES, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _first_reach(curve, target):
    """(updates, seconds) when the validation NLL first reached ``target``, else None."""
    for row in curve:
        if row["valid_nll"] <= target:
            return row["updates"], row["seconds"]
    return None


def convergence_claim(rows):
    claim = "The GRU converges faster than the LSTM, per update and per second of wall-clock."
    by = _by(rows)
    data = [d for d in by if "gru" in by[d] and "lstm" in by[d]]
    if not data:
        return claim, "No committed music runs of both gated units.", "not checked"
    body, wins = [], [0, 0]
    for d in data:
        curves = {c: [_curves(p) for p in by[d][c]["run_dirs"]] for c in ("gru", "lstm")}
        # the target both reach: the worse unit's best validation NLL (mean over its seeds)
        target = max(statistics.fmean(min(r["valid_nll"] for r in cv) for cv in curves[c])
                     for c in ("gru", "lstm"))
        reach = {c: [x for x in (_first_reach(cv, target) for cv in curves[c]) if x]
                 for c in ("gru", "lstm")}
        mean = {c: (statistics.fmean(u for u, _ in reach[c]), statistics.fmean(s for _, s in reach[c]))
                if reach[c] else (math.inf, math.inf) for c in ("gru", "lstm")}
        wins[0] += mean["gru"][0] < mean["lstm"][0]
        wins[1] += mean["gru"][1] < mean["lstm"][1]
        body.append([d, f"{target:.2f}", *(f"{mean[c][0]:,.0f} / {mean[c][1]:,.0f} s"
                                           for c in ("gru", "lstm"))])
    evidence = ("Updates and seconds of training until the validation NLL first reaches the "
                "worse unit's best (mean over seeds; both units at Table 1's size, the same data "
                "and protocol, on the same machine):\n\n" +
                markdown_table(["dataset", "target valid NLL", "GRU", "LSTM"], body) +
                f"\n\nThe GRU gets there in fewer updates on {wins[0]} of {len(data)} datasets "
                f"and in less time on {wins[1]} of {len(data)}.")
    verdict = ("holds" if min(wins) == len(data) else "mixed" if max(wins) > 0 else
               "does not hold")
    return claim, evidence, verdict


NONLINEARITIES = {"tanh": 1, "gru": 3, "lstm": 5}     # per unit and step: sigmoids and tanh


def step_cost(cell, inputs, hidden):
    """(multiply-adds of one step's products, nonlinearities evaluated) of a unit: every entry
    of W and U once (x_t W^T and h U^T); GRU 2 sigmoids + 1 tanh per unit, LSTM 3 + 2."""
    from .cells import UNITS
    unit = UNITS[cell](inputs, hidden, device="meta")
    products = sum(p.numel() for name, p in unit.named_parameters() if name.startswith("weight"))
    return products, NONLINEARITIES[cell] * hidden


def cost_claim(rows):
    from .model import TABLE1_UNITS
    claim = ("At an equal parameter budget the GRU needs less computation and time per step "
             "than the LSTM.")
    cost = {c: step_cost(c, 88, TABLE1_UNITS["music"][c]) for c in ("gru", "lstm")}
    by = _by(rows)
    data = [d for d in by if "gru" in by[d] and "lstm" in by[d]]
    times = {d: {c: by[d][c]["seconds"] / by[d][c]["epochs"] for c in ("gru", "lstm")}
             for d in data}
    body = [[d, *(f"{times[d][c]:.2f}" for c in ("gru", "lstm"))] for d in data]
    evidence = (f"Per step at Table 1's music sizes (88 inputs): the products take GRU (46 units) "
                f"{cost['gru'][0]:,} and LSTM (36 units) {cost['lstm'][0]:,} multiply-adds; the "
                f"gates evaluate {cost['gru'][1]} and {cost['lstm'][1]} sigmoids and tanh. "
                "Seconds per training epoch in the committed runs (our fast backend, one core, "
                "the evaluation of the train and validation splits included):\n\n" +
                markdown_table(["dataset", "GRU s / epoch", "LSTM s / epoch"], body))
    faster = sum(times[d]["gru"] < times[d]["lstm"] for d in data)
    cheaper = cost["gru"][0] < cost["lstm"][0] and cost["gru"][1] < cost["lstm"][1]
    verdict = ("holds" if cheaper and data and faster == len(data) else
               "mixed" if cheaper or faster else "does not hold")
    return claim, evidence, verdict


def _gradflow(paths):
    """{measurement (the CSV's folder): {(cell, state): {k: mean gradient norm}}} of gradflow
    CSV files."""
    out = {}
    for p in paths:
        table = {}
        with open(p, newline="") as f:
            for row in csv.DictReader(f):
                table.setdefault((row["cell"], row["state"]), {})[int(row["k"])] = float(
                    row["mean_grad_norm"])
        out[p.parent.name] = table
    return out


def gradflow_claim(flows):
    claim = "The gated units keep the gradient alive over longer lags than the tanh unit."
    if not flows:
        return claim, "No committed gradient-flow measurement (`gatedrnn gradflow`).", "not checked"
    body, holds, total = [], 0, 0
    for name, table in flows.items():
        if not all((c, "trained") in table for c in PAPER):
            continue                                     # not the paper's three units
        longest = min(max(table[(c, "trained")]) for c in PAPER)
        for lag in sorted({10, 25, 50, longest}):
            values = {c: table.get((c, "trained"), {}).get(lag) for c in PAPER}
            if None in values.values():
                continue
            ratio = {c: values[c] / table[(c, "trained")][0] for c in PAPER}
            body.append([name, lag, *(f"{ratio[c]:.2e}" for c in PAPER)])
            if lag >= 25:                                # the longer lags the claim is about
                total += 1
                holds += ratio["tanh"] < min(ratio["gru"], ratio["lstm"])
    evidence = ("|| d nll_t / d h_{t-k} || at lag k relative to lag 0, trained models, mean over "
                "test sequences and sampled steps (the claim is judged at lags of 25 and more):"
                "\n\n" + markdown_table(["measurement", "lag k", "tanh", "GRU", "LSTM"], body))
    verdict = ("holds" if total and holds == total else "mixed" if holds else "does not hold")
    return claim, evidence, verdict


def neither_claim(rows):
    claim = "Neither gated unit is better than the other in general."
    by = _by(rows)
    data = [d for d in by if "gru" in by[d] and "lstm" in by[d]]
    if not data:
        return claim, "No committed runs of both gated units.", "not checked"
    outcome = {d: _better(by[d]["gru"], by[d]["lstm"]) for d in data}
    words = {1: "GRU better", -1: "LSTM better", 0: "within one std"}
    evidence = ("GRU against LSTM per dataset (test NLL, separated when the gap exceeds the sum "
                "of their standard deviations): " +
                "; ".join(f"{d}: {plus_minus(by[d]['gru'], 'test_nll')} vs "
                          f"{plus_minus(by[d]['lstm'], 'test_nll')}, {words[o]}"
                          for d, o in outcome.items()) + ".")
    gru, lstm = sum(o == 1 for o in outcome.values()), sum(o == -1 for o in outcome.values())
    verdict = ("holds" if gru and lstm or not (gru or lstm) else
               "does not hold: the GRU is better everywhere it is separated" if gru else
               "does not hold: the LSTM is better everywhere it is separated")
    return claim, evidence, verdict
