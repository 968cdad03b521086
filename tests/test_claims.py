"""The claims' verdicts follow their evidence: each claim on made-up tables that should make it
hold, be mixed, or not hold; and the committed claims.md is what report makes of the runs."""
import shutil
from pathlib import Path

from gatedrnn import claims

RESULTS = Path(__file__).resolve().parents[1] / "results"


def row(dataset, cell, mean, std=0.01):
    return {"dataset": dataset, "cell": cell, "test_nll_mean": mean, "test_nll_std": std,
            "seeds": 3}


def test_speech_claim():
    far = [row("fsdd", "tanh", 4.0), row("fsdd", "gru", -3.0), row("fsdd", "lstm", -2.0)]
    assert claims.speech_claim(far)[2] == "holds"
    near = [row("fsdd", "tanh", 4.0), row("fsdd", "gru", 3.9), row("fsdd", "lstm", 5.0)]
    assert claims.speech_claim(near)[2] == "mixed"
    worse = [row("fsdd", "tanh", 1.0), row("fsdd", "gru", 3.0), row("fsdd", "lstm", 2.0)]
    assert claims.speech_claim(worse)[2] == "does not hold"
    assert claims.speech_claim([])[2] == "not checked"


def test_music_claim():
    close = [row(d, c, 8 + 0.1 * (c != "gru")) for d in ("a", "b", "c") for c in claims.PAPER]
    assert claims.music_claim(close)[2] == "holds"
    apart = [row(d, c, 8 + 3 * (c == "lstm") - 0.1 * (c == "gru")) for d in ("a", "b")
             for c in claims.PAPER]
    assert claims.music_claim(apart)[2] == "mixed"          # the GRU is best, not close
    lstm_best = [row(d, c, 8 + 3 * (c != "lstm")) for d in ("a", "b") for c in claims.PAPER]
    assert claims.music_claim(lstm_best)[2] == "does not hold"


def test_neither_claim():
    split = [row("a", "gru", 1.0), row("a", "lstm", 2.0), row("b", "gru", 2.0), row("b", "lstm", 1.0)]
    assert claims.neither_claim(split)[2] == "holds"
    tied = [row("a", "gru", 1.0, 0.5), row("a", "lstm", 1.2, 0.5)]
    assert claims.neither_claim(tied)[2] == "holds"
    gru = [row("a", "gru", 1.0), row("a", "lstm", 2.0), row("b", "gru", 1.0, 1), row("b", "lstm", 1.1)]
    assert claims.neither_claim(gru)[2].startswith("does not hold: the GRU")


def curve(k, decay):
    return {j: decay ** j for j in range(k + 1)}


def test_gradflow_claim_judged_at_long_lags():
    flows = {"x": {("tanh", "trained"): curve(60, 0.5), ("gru", "trained"): curve(60, 0.99),
                   ("lstm", "trained"): curve(60, 0.9)}}
    assert claims.gradflow_claim(flows)[2] == "holds"
    flows["x"][("lstm", "trained")] = curve(60, 0.3)
    assert claims.gradflow_claim(flows)[2] == "does not hold"
    assert claims.gradflow_claim({})[2] == "not checked"


def test_committed_claims_are_rebuilt_by_report(tmp_path):
    if not (RESULTS / "claims.md").is_file():
        return
    for part in ("runs", "speech", "gradflow", "sweep.json"):
        source = RESULTS / part
        if source.is_dir():
            shutil.copytree(source, tmp_path / part)
        elif source.is_file():
            shutil.copy(source, tmp_path / part)
    path = claims.write_claims(tmp_path)
    assert path.read_text() == (RESULTS / "claims.md").read_text()
