"""Tables built from results: ours beside the paper's Table 1 and Table 2."""
from .model import table1_rows

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


def compare_markdown(dataset, results):
    """results: {cell: metrics dict}. Ours beside the paper's Table 2 row for ``dataset``."""
    paper = PAPER_TABLE2.get(dataset, {})
    rows = []
    for cell, m in results.items():
        p_train, p_test = paper.get(cell, (None, None))
        rows.append([cell, f"{m['params']:,}", f"{m['train_nll']:.2f}", f"{m['valid_nll']:.2f}",
                     f"{m['test_nll']:.2f}", _fmt(p_train), _fmt(p_test), m["best_epoch"],
                     f"{m['seconds']:.0f}"])
    header = ["unit", "params", "train", "valid", "test", "paper train", "paper test",
              "best epoch", "seconds"]
    speech = all("test_nll_per_sample" in m for m in results.values()) and results
    if speech:
        base = next(iter(results.values()))["baseline_iid_gaussian_per_sample"]["test"]
        header += ["test per sample", "i.i.d. Gaussian per sample"]
        for row, m in zip(rows, results.values()):
            row += [f"{m['test_nll_per_sample']:.3f}", f"{base:.3f}"]
    return markdown_table(header, rows)


def _fmt(x):
    return "-" if x is None else f"{x:.2f}"
