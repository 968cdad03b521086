"""The unit API and the units after the paper: each new unit against its published equations
written here in numpy, the parallel scan against the step-by-step loop (values and gradients),
equal-budget sizing, and a unit defined outside the package trained and evaluated through the CLI.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from gatedrnn.cells import UNITS, RecurrentUnit, count_parameters, register, unit_class
from gatedrnn.errors import UserError
from gatedrnn.model import BUDGET, TABLE1_UNITS, hidden_for_params

I, H, T, B = 4, 3, 4, 2
NEW = ["mut1", "mgu", "cifg", "mingru", "minlstm"]


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def g(v):
    """Feng et al.'s positive activation."""
    return np.where(v >= 0, v + 0.5, sigmoid(v))


def randomized(name, seed=0, **kwargs):
    unit = UNITS[name](I, H, **kwargs).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unit.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return unit


def published(name, p, x, state):
    """One unit's published equations, float64 numpy, one line per gate; x (T, B, I)."""
    W = p["weight_ih"]
    blocks = lambda M, n: [M[k * H:(k + 1) * H] for k in range(n)]      # noqa: E731
    h = state[0]
    c = state[1] if len(state) > 1 else None
    out = []
    for x_t in x:
        if name == "mut1":      # Jozefowicz et al. 2015, x_t projected by W_x (no bias inside)
            W_xz, W_xr, W_x = blocks(W, 3)
            W_hr, W_hh = blocks(p["weight_hh"], 2)
            b_z, b_r, b_h = blocks(p["bias"], 3)
            z = sigmoid(x_t @ W_xz.T + b_z)
            r = sigmoid(x_t @ W_xr.T + h @ W_hr.T + b_r)
            h = np.tanh((r * h) @ W_hh.T + np.tanh(x_t @ W_x.T) + b_h) * z + h * (1 - z)
        elif name == "mgu":     # Zhou et al. 2016
            W_f, W_h = blocks(W, 2)
            U_f, U_h = blocks(p["weight_hh"], 2)
            b_f, b_h = blocks(p["bias"], 2)
            f = sigmoid(x_t @ W_f.T + h @ U_f.T + b_f)
            h_tilde = np.tanh(x_t @ W_h.T + (f * h) @ U_h.T + b_h)
            h = (1 - f) * h + f * h_tilde
        elif name == "cifg":    # Greff et al. 2017: f = 1 - i, peepholes on i (c_{t-1}) and o (c_t)
            W_i, W_g, W_o = blocks(W, 3)
            U_i, U_g, U_o = blocks(p["weight_hh"], 3)
            b_i, b_g, b_o = blocks(p["bias"], 3)
            V_i, V_o = p["peephole"]
            i = sigmoid(x_t @ W_i.T + h @ U_i.T + V_i * c + b_i)
            c = (1 - i) * c + i * np.tanh(x_t @ W_g.T + h @ U_g.T + b_g)
            o = sigmoid(x_t @ W_o.T + h @ U_o.T + V_o * c + b_o)
            h = o * np.tanh(c)
        elif name == "mingru":  # Feng et al. 2024, log-space form (h~ = g(.))
            W_z, W_h = blocks(W, 2)
            b_z, b_h = blocks(p["bias"], 2)
            z = sigmoid(x_t @ W_z.T + b_z)
            h = (1 - z) * h + z * g(x_t @ W_h.T + b_h)
        elif name == "minlstm":
            W_f, W_i, W_h = blocks(W, 3)
            b_f, b_i, b_h = blocks(p["bias"], 3)
            f, i = sigmoid(x_t @ W_f.T + b_f), sigmoid(x_t @ W_i.T + b_i)
            h = f / (f + i) * h + i / (f + i) * g(x_t @ W_h.T + b_h)
        out.append(h)
    return np.stack(out), (h,) if c is None else (h, c)


@pytest.mark.parametrize("backend", ["reference", "fast"])
@pytest.mark.parametrize("name", NEW)
def test_new_units_follow_their_published_equations(name, backend):
    unit = randomized(name, seed=1, backend=backend)
    params = {k.removesuffix("_l0"): v.detach().numpy() for k, v in unit.named_parameters()}
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64)
    state = tuple(torch.randn(1, B, H, generator=gen, dtype=torch.float64).abs()
                  for _ in range(unit.n_states))
    out, final = unit(x, state[0] if unit.n_states == 1 else state)
    ref_out, ref_final = published(name, params, x.numpy(), tuple(s[0].numpy() for s in state))
    torch.testing.assert_close(out, torch.from_numpy(ref_out), rtol=1e-10, atol=1e-10)
    for s, r in zip(final if isinstance(final, tuple) else (final,), ref_final):
        torch.testing.assert_close(s[0], torch.from_numpy(r), rtol=1e-10, atol=1e-10)


def test_new_units_parameter_layout():
    shapes = {name: {k: tuple(p.shape) for k, p in UNITS[name](I, H).named_parameters()}
              for name in NEW}
    assert shapes["mut1"] == {"weight_ih_l0": (3 * H, I), "weight_hh_l0": (2 * H, H),
                              "bias_l0": (3 * H,)}
    assert shapes["mgu"] == {"weight_ih_l0": (2 * H, I), "weight_hh_l0": (2 * H, H),
                             "bias_l0": (2 * H,)}
    assert shapes["cifg"] == {"weight_ih_l0": (3 * H, I), "weight_hh_l0": (3 * H, H),
                              "bias_l0": (3 * H,), "peephole_l0": (2, H)}
    assert shapes["mingru"] == {"weight_ih_l0": (2 * H, I), "bias_l0": (2 * H,)}
    assert shapes["minlstm"] == {"weight_ih_l0": (3 * H, I), "bias_l0": (3 * H,)}


@pytest.mark.parametrize("method, dtype, tol", [
    ("log", torch.float64, 1e-10), ("linear", torch.float64, 1e-10),
    ("log", torch.float32, 1e-5), ("linear", torch.float32, 1e-5)])
@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_scans_equal_the_loop(name, method, dtype, tol):
    """The parallel scan in log space and the compiled linear pass against the step-by-step
    loop: values and every gradient (input, h0, parameters), padded batches with an empty
    sequence, a negative initial state, batch_first, a sequence longer than a scan chunk."""
    from gatedrnn.kernels import parallel
    gen = torch.Generator().manual_seed(3)
    fast = randomized(name, seed=4, backend="fast", batch_first=True).to(dtype)
    fast.scan_method = method
    ref = randomized(name, seed=4, backend="reference", batch_first=True).to(dtype)
    Tl = 2 * parallel.CHUNK + 37
    x = torch.randn(3, Tl, I, generator=gen, dtype=torch.float64).to(dtype)
    h0 = torch.randn(1, 3, H, generator=gen, dtype=torch.float64).to(dtype)    # any sign
    lengths = torch.tensor([Tl, 0, 100])
    results = []
    for unit in (fast, ref):
        xx, hh = x.clone().requires_grad_(), h0.clone().requires_grad_()
        out, final = unit(xx, hh, lengths=lengths)
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        ((out * w.to(dtype)).sum() + final.pow(2).sum()).backward()
        results.append([out, final, xx.grad, hh.grad, *(p.grad for p in unit.parameters())])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * max(1.0, b.abs().max().item()))
    assert torch.equal(results[0][1][0, 1], h0[0, 1])          # the empty sequence keeps h0


@pytest.mark.parametrize("method", ["log", "linear"])
def test_the_scans_run_without_the_step_loop(monkeypatch, method):
    """The fast backend of minGRU computes all steps' gates at once: its step is never called."""
    unit = randomized("mingru", backend="fast")
    unit.scan_method = method
    monkeypatch.setattr(type(unit), "step", lambda *a: pytest.fail("the loop ran"))
    unit(torch.randn(T, B, I, dtype=torch.float64))


# -- equal parameter budgets ----------------------------------------------------------------------

@pytest.mark.parametrize("task, width", [("music", 88), ("speech", 20)])
@pytest.mark.parametrize("name", sorted(UNITS))
def test_params_hits_the_budget_within_two_percent(name, task, width):
    budget = BUDGET[task]
    hidden = hidden_for_params(UNITS[name], width, budget)
    count = count_parameters(UNITS[name], width, hidden)
    assert abs(count - budget) <= 0.02 * budget
    # and no other size is closer
    for other in (hidden - 1, hidden + 1):
        if other >= 1:
            assert abs(count_parameters(UNITS[name], width, other) - budget) >= abs(count - budget)


def test_table1_sizes_are_the_defaults_of_the_papers_units():
    from gatedrnn.config import ModelConfig
    from gatedrnn.data import MUSIC_TASK, SPEECH_TASK
    from gatedrnn.model import resolve
    for task, group in ((MUSIC_TASK, "music"), (SPEECH_TASK, "speech")):
        for name, size in TABLE1_UNITS[group].items():
            assert resolve(ModelConfig(cell=name), task).hidden_size == size
        hidden = resolve(ModelConfig(cell="mgu"), task).hidden_size
        assert hidden == hidden_for_params(UNITS["mgu"], task.input_size, BUDGET[group])
        sized = resolve(ModelConfig(cell="gru", params=20_000), task).hidden_size
        assert sized == hidden_for_params(UNITS["gru"], task.input_size, 20_000)


def test_params_lists_every_registered_unit(capsys):
    from gatedrnn.cli import main
    assert main(["params"]) == 0
    out = capsys.readouterr().out
    for name in UNITS:
        assert f"| {name} | music |" in out and f"| {name} | speech |" in out
    assert main(["params", "--params", "50000"]) == 0
    assert "budget 50,000" in capsys.readouterr().out


# -- a unit of one's own --------------------------------------------------------------------------

USER_UNIT = '''
    import torch
    from gatedrnn import RecurrentUnit


    class Elman(RecurrentUnit):
        """h_t = tanh(W x_t + U h_{t-1} + b), written as a user would."""

        def step(self, xw, state, w):
            (h,) = state
            return (torch.tanh(xw + h @ w["weight_hh"].T),)
'''


def test_a_units_class_is_found_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "myunits.py").write_text(textwrap.dedent(USER_UNIT))
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = unit_class("myunits:Elman")
    assert cls.__name__ == "Elman" and issubclass(cls, RecurrentUnit)
    with pytest.raises(UserError, match=r"unit 'myunits:Nope': cannot import Nope from myunits"):
        unit_class("myunits:Nope")
    with pytest.raises(UserError, match=r"unit 'json:loads' is not a gatedrnn.RecurrentUnit"):
        unit_class("json:loads")
    # the same equations as the tanh unit: same outputs and gradients for the same weights
    mine, theirs = cls(I, H).double(), UNITS["tanh"](I, H, backend="reference").double()
    mine.load_state_dict(theirs.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.testing.assert_close(mine(x)[0], theirs(x)[0], rtol=1e-12, atol=1e-12)


def test_register_adds_a_unit_to_the_registry():
    @register("test-elman")
    class Elman(RecurrentUnit):
        def step(self, xw, state, w):
            return (torch.tanh(xw + state[0] @ w["weight_hh"].T),)
    try:
        assert UNITS["test-elman"] is Elman and unit_class("test-elman") is Elman
    finally:
        del UNITS["test-elman"]


def cli(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "gatedrnn.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def test_a_unit_defined_outside_the_package_trains_through_the_cli_and_is_rebuilt(
        tmp_path, polyphonic_dir):
    (tmp_path / "myunits.py").write_text(textwrap.dedent(USER_UNIT))
    run = tmp_path / "run"
    r = cli("train", "--dataset", "jsb", "--cell", "myunits:Elman", "--params", "5000",
            "--epochs", "1", "--batch-size", "64", "--data-dir", polyphonic_dir, "--run-dir", run,
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "has no fast path; it runs the reference loop" in r.stderr
    config = json.loads((run / "config.json").read_text())["config"]["model"]
    assert config["cell"] == "myunits:Elman" and config["params"] == 5000
    assert config["hidden_size"] == hidden_for_params(unit_class("tanh"), 88, 5000)
    metrics = json.loads((run / "metrics.json").read_text())
    r = cli("eval", run, cwd=tmp_path)                        # rebuilt from its import path
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("test_nll "))
    assert float(line.split()[1]) == pytest.approx(metrics["test_nll"], abs=1e-4)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = cli("eval", run, cwd=elsewhere)                       # not importable from there
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "unit 'myunits:Elman': cannot import Elman from myunits" in r.stderr
