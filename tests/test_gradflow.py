"""gatedrnn gradflow: the gradient norms against a brute-force autograd computation, one (t, k)
at a time through the unit's own forward; the files written for several runs; the command."""
import csv
import subprocess
import sys

import numpy as np
import pytest
import torch

from gatedrnn.data.batching import music_examples
from gatedrnn.data.midi import write_midi
from gatedrnn.data.speech import Normalization, speech_examples
from gatedrnn.errors import UserError
from gatedrnn.gradflow import chosen_times, gradient_flow, gradient_norms
from gatedrnn.model import SequenceModel
from gatedrnn.train import train
from helpers import model_config, train_config


def brute_force(model, examples, lags, times, seed):
    """sums and counts as gradient_norms defines them, each d nll_t / d h_{t-k} on its own: the
    state after step t - k (the unit's forward over x_0..x_{t-k}) made a leaf, the unit's
    forward from it over x_{t-k+1}..x_t, the head, torch.autograd.grad."""
    model = model.double().eval()
    sums, counts = np.zeros(lags + 1), np.zeros(lags + 1, np.int64)
    for n, (inputs, targets) in enumerate(examples):
        x = inputs.double().unsqueeze(0)                          # (1, T, I)
        y = targets.unsqueeze(0)
        y = y if y.dtype == torch.int64 else y.double()
        for t in chosen_times(len(inputs), times, seed, n):
            for k in range(min(t, lags) + 1):
                j = t - k
                _, state = model.rnn(x[:, :j + 1])
                parts = state if isinstance(state, tuple) else (state,)
                leaf = parts[0].detach().requires_grad_(True)     # h_j (L, 1, H)
                given = (leaf, *(p.detach() for p in parts[1:]))
                given = given if isinstance(state, tuple) else given[0]
                if k == 0:
                    top = leaf[-1].unsqueeze(1)                   # (1, 1, H)
                else:
                    out, _ = model.rnn(x[:, j + 1:t + 1], given)
                    top = out[:, -1:]
                nll = model.head.nll(model.head(top), y[:, t:t + 1]).sum()
                (g,) = torch.autograd.grad(nll, leaf)
                sums[k] += torch.linalg.vector_norm(g).item()
                counts[k] += 1
    return sums, counts


def rolls(n, rng, lo=4, hi=9):
    return [(rng.random((rng.integers(lo, hi), 88)) < 0.2).astype(np.uint8) for _ in range(n)]


@pytest.mark.parametrize("cell, layers", [("gru", 1), ("lstm", 1), ("lstm", 2), ("tanh", 1)])
@pytest.mark.parametrize("lags, times", [(10, 100), (2, 3)])
def test_gradient_norms_equal_brute_force(cell, layers, lags, times):
    torch.manual_seed(0)
    model = SequenceModel(model_config(cell=cell, hidden_size=3, num_layers=layers))
    examples = music_examples([np.eye(88, dtype=np.uint8)[[3, 40, 41, 7, 50, 9]],   # T = 6
                               *rolls(2, np.random.default_rng(1))])
    sums, counts = gradient_norms(model, examples, lags=lags, times=times, seed=4)
    expected_sums, expected_counts = brute_force(model, examples, lags, times, seed=4)
    np.testing.assert_array_equal(counts, expected_counts)
    assert counts[0] == sum(min(len(i), times) for i, _ in examples)
    np.testing.assert_allclose(sums, expected_sums, rtol=1e-9, atol=1e-14)
    assert (sums[counts > 0] > 0).all()


def test_gradient_norms_speech_gmm_head_against_brute_force():
    torch.manual_seed(1)
    model = SequenceModel(model_config(cell="gru", hidden_size=3, input_size=20, output_size=10,
                                       head="gmm", components=2))
    waves = [np.random.default_rng(i).normal(0, 1, n) for i, n in enumerate((150, 110))]
    examples = speech_examples(waves, Normalization(0.0, 1.0))   # 7 and 5 steps
    got = gradient_norms(model, examples, lags=4, times=5, seed=0)
    expected = brute_force(model, examples, 4, 5, seed=0)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-9, atol=1e-14)


def test_model_is_left_as_it_was():
    model = SequenceModel(model_config(cell="gru", hidden_size=3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gradient_norms(model, music_examples(rolls(1, np.random.default_rng(0))), lags=3)
    assert model.training and all(v.dtype == torch.float32 for v in model.state_dict().values())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_chosen_times_are_seeded_subsets():
    assert chosen_times(5, 8, 0, 0) == [0, 1, 2, 3, 4]
    a = chosen_times(100, 8, 0, 3)
    assert len(set(a)) == 8 and a == sorted(a) and max(a) < 100
    assert a == chosen_times(100, 8, 0, 3) and a != chosen_times(100, 8, 1, 3)
    assert a != chosen_times(100, 8, 0, 4)


# -- runs, files, the command ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """tanh, GRU and LSTM runs on one folder of 12 MIDI files (9/2/1 by the names' hash)."""
    root = tmp_path_factory.mktemp("gradflow")
    rng = np.random.default_rng(0)
    for i in range(12):
        roll = (rng.random((12 + 3 * i, 88)) < 0.04).astype(np.uint8)
        roll[np.arange(len(roll)), 40 + 3 * (np.arange(len(roll)) % 2)] = 1
        write_midi(roll, root / f"p{i:02d}.mid")
    out = {}
    for cell in ("tanh", "gru", "lstm"):
        config = train_config(dataset=f"midi:{root}", cell=cell, hidden_size=6, epochs=2,
                              batch_size=4, lr=1e-2)
        train(config, root / cell, log=lambda s: None)
        out[cell] = root / cell
    return out


def test_gradient_flow_writes_csv_and_figure(runs, tmp_path):
    lines = []
    paths = gradient_flow(list(runs.values()), tmp_path, lags=8, max_sequences=1, times=6,
                          log=lines.append)
    assert [p.name for p in paths] == ["gradflow.csv", "gradflow.png"]
    assert paths[1].read_bytes().startswith(b"\x89PNG")
    rows = list(csv.DictReader(paths[0].open()))
    assert list(rows[0]) == ["run", "cell", "state", "k", "mean_grad_norm", "count"]
    assert {(r["cell"], r["state"]) for r in rows} == {
        (c, s) for c in ("tanh", "gru", "lstm") for s in ("trained", "init")}
    for cell in runs:
        for state in ("trained", "init"):
            part = [r for r in rows if r["cell"] == cell and r["state"] == state]
            assert [int(r["k"]) for r in part] == list(range(9))
            assert int(part[0]["count"]) == 6                  # one sequence, 6 sampled steps
            assert all(float(r["mean_grad_norm"]) > 0 for r in part)
    gru = {s: [float(r["mean_grad_norm"]) for r in rows if r["cell"] == "gru" and r["state"] == s]
           for s in ("trained", "init")}
    assert gru["trained"] != gru["init"]
    assert len(lines) == 6 and lines[0].startswith("tanh trained: 1 sequences, 6 steps t")
    assert not list(tmp_path.glob(".*"))                       # no temporary files left


def test_init_curve_is_the_seeds_initial_model(runs, tmp_path):
    """The init rows are those of train.build_model(config), the model training started from,
    and the caller's random state is left as it was."""
    from gatedrnn.train import build_model, load_config_data, read_run
    config, record = read_run(runs["gru"])
    torch.manual_seed(123)
    before = torch.get_rng_state()
    (path, _) = gradient_flow([runs["gru"]], tmp_path, lags=3, max_sequences=1, times=4)
    assert torch.equal(torch.get_rng_state(), before)
    rows = [r for r in csv.DictReader(path.open()) if r["state"] == "init"]
    examples = load_config_data(config, record["data"]).examples["test"][:1]
    sums, counts = gradient_norms(build_model(config), examples, lags=3, times=4)
    np.testing.assert_allclose([float(r["mean_grad_norm"]) for r in rows], sums / counts,
                               rtol=1e-12)


@pytest.mark.parametrize("kwargs, message", [
    ({"lags": -1}, "lags must be an integer >= 0, got -1"),
    ({"max_sequences": 0}, "max_sequences must be an integer >= 1"),
    ({"times": 0}, "times must be an integer >= 1"),
])
def test_bad_arguments_are_user_errors(runs, tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        gradient_flow([runs["gru"]], tmp_path / "out", **kwargs)
    with pytest.raises(UserError, match="run directory not found"):
        gradient_flow([runs["gru"], tmp_path / "missing"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "gatedrnn.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_cli_gradflow(runs, tmp_path):
    r = run_cli("gradflow", runs["gru"], runs["lstm"], "--lags", 4, "--out", tmp_path / "out",
                "--max-sequences", 1, "--times", 3)
    assert r.returncode == 0, r.stderr
    assert "gru trained:" in r.stdout and "lstm init:" in r.stdout
    assert (tmp_path / "out" / "gradflow.png").is_file()
    rows = list(csv.DictReader((tmp_path / "out" / "gradflow.csv").open()))
    assert len(rows) == 2 * 2 * 5
    for args, message in (((tmp_path / "missing",), "run directory not found"),
                          ((runs["gru"], "--lags", -1), "lags must be an integer >= 0")):
        r = run_cli("gradflow", *args, "--out", tmp_path / "o")
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr
        assert "Traceback" not in r.stderr
