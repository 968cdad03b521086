"""The fast backend (gatedrnn/kernels) against the reference loop of cells.py, which
tests/test_cells.py checks against numpy and torch.nn: outputs and every gradient (input, W, U,
biases, peepholes, h0 / c0), in float64 to 1e-10 and float32 to 1e-5 relative, for every unit
with compiled kernels (those of cells.UNITS with a sequential recurrence: all but minGRU /
minLSTM, whose parallel scan has its own tests) and each of its variants, on padded and
unbatched input, batch_first, with and without an initial state, without biases; gradcheck;
weight noise; a training step; the fallbacks to the reference loop and their warnings; the
projection of binary (piano-roll) inputs and when it is used; the compiled Bernoulli NLL.
"""
import math
from contextlib import nullcontext

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gatedrnn import heads, kernels
from gatedrnn.cells import CELLS, UNITS
from gatedrnn.errors import UserError
from gatedrnn.heads import bernoulli_nll
from gatedrnn.model import ModelConfig, SequenceModel
from gatedrnn.train import PaperRMSprop, train_step
from gatedrnn.data.batching import pad
from helpers import train_config

# every unit whose gates read h_{t-1} (no parallel scan) has kernels; (name, variant) pairs
NAMES = [name for name, cls in UNITS.items() if cls.parallel_scan is None]
UNIT_VARIANTS = [(name, variant) for name in NAMES for variant in UNITS[name].variants]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}


def pair(name, variant, I, H, dtype, seed=0, **kwargs):
    """The same unit twice: backend="reference" and backend="fast", random nonzero parameters."""
    ref = UNITS[name](I, H, variant=variant, backend="reference", **kwargs).to(dtype)
    g = torch.Generator().manual_seed(seed)
    scale = min(0.5, 1 / H ** 0.5)     # a gain near 1: float32 rounding is not amplified
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64))
    fast = UNITS[name](I, H, variant=variant, backend="fast", **kwargs).to(dtype)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


def run(unit, x, state, seed, x_grad=True, **kwargs):
    """Forward, a loss weighting every output and final-state entry differently, backward.
    Returns [output, *final state, x.grad (if x_grad), *state grads, *parameter grads]."""
    x = x.clone().requires_grad_(x_grad)
    state = None if state is None else tuple(s.clone().requires_grad_() for s in state)
    packed = None if state is None else state[0] if len(state) == 1 else state
    out, final = unit(x, packed, **kwargs)
    g = torch.Generator().manual_seed(seed)
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum()
    for s in as_tuple(final):
        loss = loss + (s * torch.randn(s.shape, generator=g, dtype=s.dtype)).sum()
    loss.backward()
    grads = [x.grad] * x_grad + ([] if state is None else [s.grad for s in state])
    return [out, *as_tuple(final), *grads, *(p.grad for p in unit.parameters())]


def assert_same(ours, reference, dtype):
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference):
        assert a.dtype == b.dtype == dtype and a.shape == b.shape
        scale = max(1.0, b.abs().max().item())          # float32: relative to the largest entry
        tol = TOL[dtype]
        torch.testing.assert_close(a, b, rtol=tol["rtol"], atol=tol["atol"] * scale)


# (case, T, B, I, H)
# "sorted": lengths ascending as data.batching makes them, so the first rows end first and the
# kernels skip leading rows (kernels.jit._rows); one sequence is empty.
CASES = [("padded", 7, 4, 3, 5), ("batch_first", 6, 3, 4, 6), ("no_state", 5, 2, 3, 4),
         ("unbatched", 6, 1, 3, 5), ("large", 9, 16, 5, 20), ("sorted", 7, 4, 3, 5)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case, T, B, I, H", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("name, variant", UNIT_VARIANTS)
def test_fast_matches_reference(name, variant, case, T, B, I, H, dtype):
    batch_first = case == "batch_first"
    ref, fast = pair(name, variant, I, H, dtype, seed=1, batch_first=batch_first)
    g = torch.Generator().manual_seed(2)
    shape = (T, I) if case == "unbatched" else (B, T, I) if batch_first else (T, B, I)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    state_shape = (1, H) if case == "unbatched" else (1, B, H)
    state = None if case == "no_state" else tuple(
        torch.randn(state_shape, generator=g, dtype=torch.float64).to(dtype)
        for _ in range(ref.n_states))
    kwargs = {}
    if case in ("padded", "large"):
        kwargs["lengths"] = torch.tensor([T, 2, 0, T - 1] + [T] * (B - 4))[:B]
    if case == "sorted":
        kwargs["lengths"] = torch.tensor([2, 0, 5, T])
    if case == "batch_first":
        kwargs["mask"] = torch.arange(T).unsqueeze(0) < torch.tensor([[T], [1], [4]])  # (B, T)
    results = [run(unit, x, state, seed=3, **kwargs) for unit in (fast, ref)]
    assert_same(*results, dtype)
    assert all(torch.count_nonzero(t) > 0 for t in results[0]), "a gradient is all zero"


@pytest.mark.parametrize("name, variant", UNIT_VARIANTS)
def test_fast_backend_runs_the_units_kernels(monkeypatch, name, variant):
    """Every unit and variant above has compiled kernels and the fast backend runs them: a
    silent fallback to the reference loop would make every comparison here vacuous."""
    kernel = UNITS[name].fast_kernels.get(variant)
    assert kernel is not None and kernel in vars(kernels).values()
    calls = []
    original = kernels.scan
    monkeypatch.setattr(kernels, "scan",
                        lambda k, *a, **kw: calls.append(k) or original(k, *a, **kw))
    _, fast = pair(name, variant, 3, 4, torch.float64)
    fast(torch.randn(5, 2, 3, dtype=torch.float64), lengths=torch.tensor([5, 3]))
    assert calls == [kernel]


@pytest.mark.parametrize("inputs", ["dense", "binary"])
@pytest.mark.parametrize("name, variant", UNIT_VARIANTS)
def test_fast_matches_reference_without_biases(name, variant, inputs):
    """bias=False: the biases are zero buffers (MUT1's step bias among them, which its kernel
    reads), given no gradient; every parameter's gradient still equals the reference's."""
    I = 3 if inputs == "dense" else 20
    ref, fast = pair(name, variant, I, 5, torch.float64, seed=71, bias=False)
    assert not any(n.startswith("bias") for n, _ in fast.named_parameters())
    g = torch.Generator().manual_seed(72)
    x = (torch.randn(6, 3, I, generator=g, dtype=torch.float64) if inputs == "dense"
         else binary((6, 3, I), 0.1, seed=73))
    state = tuple(torch.randn(1, 3, 5, generator=g, dtype=torch.float64)
                  for _ in range(ref.n_states))
    results = [run(unit, x, state, seed=74, x_grad=inputs == "dense",
                   lengths=torch.tensor([6, 2, 4])) for unit in (fast, ref)]
    assert_same(*results, torch.float64)


@pytest.fixture
def threads(request):
    """torch's thread count for one test (the kernels split a batch's rows across as many)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [2, 3], indirect=True)
@pytest.mark.parametrize("inputs", ["dense", "binary"])
@pytest.mark.parametrize("name, variant", UNIT_VARIANTS)
def test_rows_split_across_threads_match_reference(name, variant, inputs, threads):
    """A batch split into row ranges that run in parallel threads gives the reference loop's
    outputs and gradients: ranges whose sequences end at different steps, some before others
    start to be skipped, one empty, sorted and not, dense and piano-roll input."""
    B, T, I, H = 13, 9, 20, 6
    assert len(kernels.Rows(B).ranges) == threads
    ref, fast = pair(name, variant, I, H, torch.float64, seed=61, batch_first=True)
    g = torch.Generator().manual_seed(62)
    x = (binary((B, T, I), 0.1, seed=63) if inputs == "binary"
         else torch.randn(B, T, I, generator=g, dtype=torch.float64))
    state = tuple(torch.randn(1, B, H, generator=g, dtype=torch.float64)
                  for _ in range(ref.n_states))
    lengths = torch.tensor([0, 1, 2, 2, 3, 9, 4, 5, 9, 6, 7, 8, 9])
    results = [run(unit, x, state, seed=64, x_grad=inputs == "dense", lengths=lengths)
               for unit in (fast, ref)]
    assert_same(*results, torch.float64)


@pytest.mark.parametrize("inputs", ["dense", "binary"])
@pytest.mark.parametrize("name, variant", UNIT_VARIANTS)
def test_stale_workspace_memory_is_never_read(monkeypatch, name, variant, inputs):
    """Every array the workspace lends starts as NaN (what a reused buffer may hold): results
    still equal the reference's, with sequences that end before, inside and after others."""
    monkeypatch.setattr(kernels.workspace.workspace, "empty", lambda shape, dtype: np.full(
        shape, np.nan if np.dtype(dtype).kind == "f" else -1, dtype))
    I = 3 if inputs == "dense" else 20
    ref, fast = pair(name, variant, I, 5, torch.float64, seed=61)
    g = torch.Generator().manual_seed(62)
    x = (torch.randn((7, 6, I), generator=g, dtype=torch.float64) if inputs == "dense"
         else binary((7, 6, I), 0.1, seed=63))
    lengths = torch.tensor([2, 0, 5, 7, 3, 7])
    results = [run(unit, x, None, seed=64, x_grad=inputs == "dense", lengths=lengths)
               for unit in (fast, ref)]
    assert_same(*results, torch.float64)


@pytest.mark.parametrize("name, variant", UNIT_VARIANTS)
def test_gradcheck(name, variant):
    ref, fast = pair(name, variant, 3, 2, torch.float64, seed=4)
    names = [n for n, _ in fast.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in fast.parameters()]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    state = [torch.randn(1, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
             for _ in range(fast.n_states)]
    k = len(state)

    def f(x, *rest):
        st = rest[0] if k == 1 else tuple(rest[:k])
        out, final = torch.func.functional_call(fast, dict(zip(names, rest[k:])), (x, st),
                                                {"lengths": torch.tensor([4, 2, 1])})
        return (out, *as_tuple(final))

    assert torch.autograd.gradcheck(f, (x, *state, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("inputs", ["dense", "binary"])
@pytest.mark.parametrize("name", NAMES)
def test_weight_noise_same_draw_same_results(csr_built, name, inputs):
    """Noise is drawn on W and U before the kernel: with one seed both backends see the same
    noisy weights, and gradients reach the parameters through them (a binary input's projection
    runs inside the kernels, with the noisy W)."""
    dense = inputs == "dense"
    I = 3 if dense else 20
    ref, fast = pair(name, "paper", I, 4, torch.float64, seed=6, weight_noise=0.3)
    x = torch.randn(5, 2, I, dtype=torch.float64) if dense else binary((5, 2, I), 0.1, seed=5)
    results = []
    for unit in (fast, ref):
        torch.manual_seed(7)
        results.append(run(unit, x, None, seed=8, x_grad=dense, lengths=torch.tensor([5, 3])))
    assert_same(*results, torch.float64)
    torch.manual_seed(9)
    clean = run(ref.eval(), x, None, seed=8, x_grad=dense, lengths=torch.tensor([5, 3]))
    assert csr_built == ([] if dense else [True])
    assert (results[0][0] - clean[0]).abs().max() > 1e-3            # the noise did something


@pytest.mark.parametrize("name", NAMES)
def test_training_step_changes_parameters_like_reference(name):
    torch.manual_seed(10)
    examples = [(torch.rand(n, 6), (torch.rand(n, 6) > 0.5).float()) for n in (7, 4, 5)]
    batch = pad(examples)
    after = []
    for backend in ("fast", "reference"):
        torch.manual_seed(11)
        model = SequenceModel(ModelConfig(cell=name, hidden_size=5, input_size=6, output_size=6,
                                          head="bernoulli", weight_noise=0.075,
                                          backend=backend)).double()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt = PaperRMSprop(model.parameters(), lr=1e-2)
        b = type(batch)(batch.inputs.double(), batch.targets.double(), batch.lengths)
        torch.manual_seed(12)
        loss, _ = train_step(model, opt, b, train_config(clip_norm=1.0))
        assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters())
        after.append((loss, [p.detach() for p in model.parameters()]))
    assert after[0][0] == pytest.approx(after[1][0], rel=1e-12)
    assert_same(after[0][1], after[1][1], torch.float64)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_double_backward_uses_reference_with_one_warning(monkeypatch, name, batch_first):
    """Also for batch-first output (written in place by the kernels) with padding."""
    monkeypatch.setattr(kernels, "_warned", set())
    ref, fast = pair(name, "paper", 3, 4, torch.float64, seed=13, batch_first=batch_first)
    x = torch.randn((2, 4, 3) if batch_first else (4, 2, 3), dtype=torch.float64)
    lengths = torch.tensor([4, 2] if batch_first else [3, 2])
    second = []
    for unit in (fast, ref):
        xx = x.clone().requires_grad_()
        out, _ = unit(xx, lengths=lengths)
        with pytest.warns(RuntimeWarning, match="double backward") if unit is fast else nullcontext():
            (gx,) = torch.autograd.grad(out.pow(2).sum(), xx, create_graph=True)
        gx.pow(2).sum().backward()
        second.append([p.grad for p in unit.parameters()])
    assert_same(*second, torch.float64)
    assert kernels._warned == {"double backward: the gradients are recomputed with the "
                               "reference loop"}


def test_unsupported_dtype_warns_once_and_runs_reference(monkeypatch):
    monkeypatch.setattr(kernels, "_warned", set())
    ref, fast = pair("lstm", "paper", 3, 4, torch.bfloat16, seed=14)
    x = torch.randn(4, 2, 3).to(torch.bfloat16)
    with pytest.warns(RuntimeWarning, match=r"backend='fast': dtype torch.bfloat16 is run by "
                      r"the reference loop"):
        out, _ = fast(x)
    assert fast.backend_for(x) == "reference"
    torch.testing.assert_close(out, ref(x)[0], rtol=0, atol=0)
    assert len(kernels._warned) == 1


def test_non_cpu_tensors_go_to_the_reference_loop(monkeypatch):
    """CUDA (here: the meta device, which needs no GPU) is served by the reference loop."""
    monkeypatch.setattr(kernels, "_warned", set())
    unit = CELLS["gru"](3, 4).to("meta")
    with pytest.warns(RuntimeWarning, match=r"meta tensors are run by the reference loop"):
        out, h = unit(torch.empty(5, 2, 3, device="meta"))
    assert out.shape == (5, 2, 4) and h.shape == (1, 2, 4) and out.device.type == "meta"


def test_backend_for_and_bad_backend():
    unit = CELLS["gru"](3, 4)
    assert unit.backend == "fast" and unit.backend_for(torch.zeros(1)) == "fast"
    assert CELLS["gru"](3, 4, backend="reference").backend_for(torch.zeros(1)) == "reference"
    assert "backend='reference'" in repr(CELLS["tanh"](3, 4, backend="reference"))
    with pytest.raises(UserError, match=r"backend must be one of fast, reference, got 'cuda'"):
        CELLS["lstm"](3, 4, backend="cuda")


def apply_compiled(stub, v):
    """stub (one of kernels.jit's compiled math functions) of every entry of v, in compiled code."""
    from numba import njit

    @njit
    def apply(v, out):
        for i in range(v.size):
            out[i] = stub(v[i])
    got = np.empty_like(v)
    apply(v, got)
    return got


@pytest.mark.parametrize("dtype, ulps", [(np.float64, 2), (np.float32, 3)])
def test_math_functions_against_numpy(dtype, ulps):
    """The vectorizable exp, sigmoid, tanh and log(1 + e) of kernels/jit.py, to a few ulp."""
    from gatedrnn.kernels import jit
    x = np.concatenate([np.linspace(-20, 20, 20001), np.geomspace(1e-12, 1, 200),
                        -np.geomspace(1e-12, 1, 200), [0.0, 0.625, -0.625]]).astype(dtype)
    unit = x[(x >= 0) & (x <= 1)]              # log(1 + e) serves e = e^-|l| in [0, 1] only
    for name, ref, v in (("vexp", np.exp, x), ("vtanh", np.tanh, x),
                         ("vsigmoid", lambda v: 1 / (1 + np.exp(-v)), x),
                         ("vlog1p_unit", np.log1p, unit)):
        got = apply_compiled(getattr(jit, name), v)
        np.testing.assert_allclose(got, ref(v.astype(np.float64)), atol=0,
                                   rtol=ulps * np.finfo(dtype).eps, err_msg=name)


@pytest.mark.parametrize("dtype, tiny, huge", [(np.float64, 1e-303, 1e303),
                                              (np.float32, 1.7e-38, 1.6e38)])
def test_exp_at_the_extremes(dtype, tiny, huge):
    """Out of range, exp stays in [e^lo, e^hi] (standing for 0 and inf); NaN stays NaN, so that
    a diverged run shows as NaN."""
    from gatedrnn.kernels import jit
    got = apply_compiled(jit.vexp, np.array([-1e4, -np.inf, 1e4, np.inf, np.nan], dtype))
    assert (0 < got[:2]).all() and (got[:2] < tiny).all()
    assert (got[2:4] > huge).all() and np.isfinite(got[2:4]).all() and np.isnan(got[4])


def binary(shape, density, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) < density).to(dtype)


@pytest.fixture
def projected(monkeypatch):
    """Counts the calls of the binary projection kernel."""
    calls = []
    original = kernels.binary.binary_project
    monkeypatch.setattr(kernels.binary, "binary_project", lambda *a: calls.append(1) or original(*a))
    return calls


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_binary_projection_matches_linear(projected, dtype, with_bias):
    g = torch.Generator().manual_seed(20)
    x = binary((9, 5, 30), 0.05, seed=21, dtype=dtype)
    x[0, 0] = 0                               # a row with no ones
    x[1, 1, :3] = 1
    W = torch.randn(12, 30, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    b = torch.randn(12, generator=g, dtype=torch.float64).to(dtype).requires_grad_() if with_bias else None
    dy = torch.randn(9, 5, 12, generator=g, dtype=torch.float64).to(dtype)
    results = []
    for f in (kernels.project, F.linear):
        y = f(x, W, b)
        wrt = [W] + ([b] if with_bias else [])
        results.append([y, *torch.autograd.grad(y, wrt, dy)])
    assert projected == [1]
    assert_same(*results, dtype)


@pytest.mark.parametrize("batch_first", [False, True])
def test_binary_projection_reads_layout_and_mask(projected, batch_first):
    """Batch-first input is read in place; padded steps hold anything (here 0.5 and NaN, which
    would send an unpadded step to the dense path) and are projected as zero input."""
    g = torch.Generator().manual_seed(26)
    T, B = 7, 3
    x = binary((T, B, 24), 0.1, seed=27)
    mask = torch.ones(T, B, dtype=torch.bool)
    mask[5:, 0] = mask[2:, 2] = False
    x[5, 0, 1], x[6, 2, 4] = 0.5, float("nan")
    W = torch.randn(10, 24, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(10, generator=g, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(T, B, 10, generator=g, dtype=torch.float64)
    given = x.transpose(0, 1).contiguous() if batch_first else x
    results = []
    for f in (kernels.project, kernels.dense_project):
        y = f(given, W, b, mask, batch_first)
        results.append([y, *torch.autograd.grad(y, [W, b], dy)])
    assert projected == [1]
    assert_same(*results, torch.float64)
    torch.testing.assert_close(results[0][0][6, 2], b.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("case", ["not binary", "NaN", "dense", "needs grad", "empty"])
def test_projection_falls_back_to_linear(projected, case):
    x = binary((6, 4, 16), 0.1, seed=22)
    if case == "not binary":
        x[2, 1, 3] = 0.5
    elif case == "NaN":
        x[5, 3, 15] = float("nan")
    elif case == "dense":
        x = binary((6, 4, 16), 0.5, seed=22)
    elif case == "needs grad":
        x.requires_grad_()
    elif case == "empty":
        x = x[:0]
    W = torch.randn(8, 16, dtype=torch.float64, requires_grad=True)
    y = kernels.project(x, W, None)
    torch.testing.assert_close(y, F.linear(x, W), rtol=0, atol=0, equal_nan=True)
    assert projected == []
    if case == "needs grad":
        y.sum().backward()
        torch.testing.assert_close(x.grad, W.sum(0).expand(6, 4, 16), rtol=0, atol=0)


@pytest.fixture
def csr_built(monkeypatch):
    """Records, per binary_csr call (the binary projection's first step), whether the input
    was taken as binary (True) or left to the dense projection (False)."""
    calls = []
    original = kernels.binary.binary_csr

    def counted(*args):
        n = original(*args)
        calls.append(n >= 0)
        return n
    monkeypatch.setattr(kernels.binary, "binary_csr", counted)
    return calls


@pytest.mark.parametrize("name, variant", UNIT_VARIANTS)
def test_fast_matches_reference_on_piano_rolls(projected, csr_built, name, variant):
    """Binary inputs that need no gradient (data) take the binary projection; padded steps may
    hold anything, they are masked before it."""
    ref, fast = pair(name, variant, 20, 6, torch.float64, seed=23)
    x = binary((8, 4, 20), 0.08, seed=24)
    x[6:, 1] = 7.0                                     # padding, never read
    state = tuple(torch.randn(1, 4, 6, dtype=torch.float64) for _ in range(ref.n_states))
    results = [run(unit, x, state, seed=25, x_grad=False, lengths=torch.tensor([8, 6, 3, 1]))
               for unit in (fast, ref)]
    assert_same(*results, torch.float64)
    assert (csr_built, projected) == ([True], [])  # projected inside the kernels, step by step


@pytest.mark.parametrize("name", NAMES)
def test_double_backward_through_a_binary_input(monkeypatch, csr_built, name):
    """A gradient penalty on the parameters: the fused binary projection's double backward
    rebuilds the input and recomputes with the reference loop."""
    monkeypatch.setattr(kernels, "_warned", set())
    ref, fast = pair(name, "paper", 20, 5, torch.float64, seed=51, batch_first=True)
    x = binary((3, 6, 20), 0.1, seed=52)
    second = []
    for unit in (fast, ref):
        out, _ = unit(x, lengths=torch.tensor([6, 4, 5]))
        params = list(unit.parameters())
        with pytest.warns(RuntimeWarning, match="double backward") if unit is fast else nullcontext():
            grads = torch.autograd.grad(out.pow(2).sum(), params, create_graph=True)
        sum(g.pow(2).sum() for g in grads).backward()
        second.append([p.grad for p in params])
    assert_same(*second, torch.float64)
    assert len(kernels._warned) == 1 and csr_built == [True]


def test_products_fall_back_to_scipys_blas_without_torchs():
    """Where torch exports no sgemm_ / dgemm_, the kernels bind scipy's OpenBLAS instead."""
    import subprocess
    import sys
    code = (
        "import glob; real = glob.glob\n"
        "glob.glob = lambda p, *a, **k: [] if 'libtorch_cpu' in p else real(p, *a, **k)\n"
        "import numpy as np, torch\n"
        "from gatedrnn import kernels\n"
        "from gatedrnn.kernels import jit\n"
        "from gatedrnn.cells import CELLS\n"
        "assert kernels.load() == \"scipy's OpenBLAS\", kernels.load()\n"
        "for dt in (np.float32, np.float64):\n"
        "    a, b = np.random.rand(32, 40).astype(dt), np.random.rand(40, 50).astype(dt)\n"
        "    out = np.empty((32, 50), dt)\n"
        "    jit._matmul(a, b, out)\n"
        "    assert np.allclose(out, a @ b, rtol=1e-5), dt\n"
        "    acc = np.ones((40, 50), dt)\n"
        "    jit._add_tn(a, out, acc)\n"
        "    assert np.allclose(acc, 1 + a.T @ out, rtol=1e-5), dt\n"
        "torch.manual_seed(0)\n"
        "ref = CELLS['lstm'](6, 9, backend='reference').double()\n"
        "fast = CELLS['lstm'](6, 9, backend='fast').double()\n"
        "fast.load_state_dict(ref.state_dict())\n"
        "x = torch.randn(7, 3, 6, dtype=torch.float64)\n"
        "(a, _), (b, _) = fast(x), ref(x)\n"
        "ga, gb = (torch.autograd.grad(o.sum(), u.weight_hh_l0) for o, u in ((a, fast), (b, ref)))\n"
        "assert torch.allclose(a, b, rtol=1e-10, atol=1e-10), (a - b).abs().max()\n"
        "assert torch.allclose(ga[0], gb[0], rtol=1e-10, atol=1e-10)\n"
        "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_workspace_lends_a_buffer_again_only_when_nothing_holds_it():
    ws = kernels.workspace.Workspace()
    a = ws.empty((300, 100), np.float32)
    address = a.ctypes.data
    b = ws.empty((300, 100), np.float32)                 # a still held: another buffer
    assert b.ctypes.data != address and a.flags.c_contiguous and a.shape == (300, 100)
    view = a[10:]
    del a
    assert ws.empty((250, 120), np.float32).ctypes.data != address   # a view still holds it
    del view
    t = torch.from_numpy(ws.empty((299, 100), np.float32))          # same size class
    assert t.data_ptr() == address
    assert ws.empty((300, 100), np.float32).ctypes.data != address  # the tensor holds it
    del t
    assert ws.empty((300, 100), np.float64).ctypes.data != address  # another size class
    assert ws.empty((300, 100), np.float32).ctypes.data == address
    assert ws.empty((3, 4), np.float32).base is None                # small: plain np.empty


@pytest.mark.parametrize("name", NAMES)
def test_interleaved_calls_keep_their_arrays(csr_built, name):
    """Two forwards before their backwards, the first output still held: the second call
    must not reuse what the first one's outputs and backward need."""
    ref, fast = pair(name, "paper", 20, 48, torch.float32, seed=41)
    xs = [binary((30, 16, 20), 0.1, seed=s, dtype=torch.float32) for s in (42, 43)]
    expected = []
    for x in xs:
        out, _ = ref(x)
        expected.append([out.detach(), *torch.autograd.grad((out * out).sum(), list(ref.parameters()))])
    outs = [fast(x)[0] for x in xs]
    kept = [o.detach().clone() for o in outs]
    got = []
    for out, copy in zip(outs, kept):
        assert torch.equal(out.detach(), copy)
        got.append([out.detach(), *torch.autograd.grad((out * out).sum(), list(fast.parameters()))])
    for g, e in zip(got, expected):
        assert_same(g, e, torch.float32)
    assert csr_built == [True, True]


# -- the Bernoulli output layer's NLL ----------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_bernoulli_nll_matches_torch(dtype):
    """Values and gradient against binary_cross_entropy_with_logits, over logits from -60 to 60
    (both tails of the softplus), zeros, tiny values, binary and soft targets."""
    g = torch.Generator().manual_seed(30)
    logits = (torch.randn(5, 7, 33, generator=g, dtype=torch.float64) * 8).to(dtype)
    logits[0, 0, :6] = torch.tensor([0.0, 60.0, -60.0, 1e-9, -1e-9, 17.0], dtype=dtype)
    target = (torch.rand(5, 7, 33, generator=g) < 0.1).to(dtype)
    target[4] = torch.rand(7, 33, generator=g, dtype=torch.float64).to(dtype)     # soft targets
    dnll = torch.randn(5, 7, generator=g, dtype=torch.float64).to(dtype)
    results = []
    for f in (bernoulli_nll,
              lambda l, y: F.binary_cross_entropy_with_logits(l, y, reduction="none").sum(-1)):
        x = logits.clone().requires_grad_()
        nll = f(x, target)
        results.append([nll, *torch.autograd.grad(nll, x, dnll)])
    assert type(results[0][0].grad_fn).__name__ == "_BernoulliNLLBackward"
    assert_same(*results, dtype)


def test_bernoulli_nll_propagates_nan_and_falls_back():
    logits = torch.zeros(2, 3, 4)
    logits[1, 2, 3] = float("nan")
    target = torch.zeros(2, 3, 4)
    nll = bernoulli_nll(logits, target)
    assert torch.isnan(nll[1, 2]) and torch.isfinite(nll[:1]).all()
    torch.testing.assert_close(nll[0], torch.full((3,), 4 * math.log(2)))
    soft = target[:1].clone().requires_grad_()      # a target that needs a gradient: torch's
    nll = bernoulli_nll(logits[:1], soft)
    assert type(nll.grad_fn).__name__ != "_BernoulliNLLBackward"
    nll.sum().backward()                            # d/dy of (max(l, 0) - l y + ...) = -l
    torch.testing.assert_close(soft.grad, -logits[:1])


def test_bernoulli_head_follows_the_models_backend(monkeypatch):
    """A model's Bernoulli head runs the compiled NLL on the fast backend and torch's on the
    reference one; same NLL and gradients."""
    calls = []
    original = heads.bernoulli_nll_loop
    monkeypatch.setattr(heads, "bernoulli_nll_loop", lambda *a: calls.append(1) or original(*a))
    torch.manual_seed(32)
    config = ModelConfig(cell="gru", hidden_size=5, input_size=6, output_size=6, head="bernoulli",
                         weight_noise=0.0)
    fast = SequenceModel(config)
    ref = SequenceModel(ModelConfig(**{**config.to_dict(), "backend": "reference"}))
    ref.load_state_dict(fast.state_dict())
    assert (fast.head.backend, ref.head.backend) == ("fast", "reference")
    x = binary((2, 4, 6), 0.3, seed=31, dtype=torch.float32)
    results = []
    for model in (fast, ref):
        nll = model.step_nll(x, x, torch.tensor([4, 2]))
        results.append([nll, *torch.autograd.grad(nll.sum(), list(model.parameters()))])
    assert calls == [1]
    assert_same(*results, torch.float32)


def test_the_kernels_blas_runs_on_one_thread_and_the_callers_setting_is_restored():
    """Inside a kernel call MKL's per-thread setting is 1 (a step's products are too small to
    share); the caller's setting comes back after. (torch sets it again for its own products.)"""
    from gatedrnn.kernels import jit
    kernels.load()
    if jit._mkl_local is None:
        pytest.skip("torch's BLAS here is not MKL")
    before = jit._mkl_local(3)                           # the caller's setting: 3
    try:
        with jit.one_blas_thread():
            inside = jit._mkl_local(1)                   # what the kernels ran with
        assert inside == 1 and jit._mkl_local(3) == 3    # then the caller's 3 again
    finally:
        jit._mkl_local(before)


def test_a_slow_first_call_says_once_that_it_is_compiling(monkeypatch):
    import io
    import threading
    from gatedrnn.kernels import jit
    said, printed = io.StringIO(), threading.Event()

    class Stderr:
        def write(self, text):
            said.write(text)
            printed.set()

        def flush(self):
            pass
    monkeypatch.setattr(jit, "NOTICE_AFTER", 0.01)
    monkeypatch.setattr(jit, "_noticed", set())
    monkeypatch.setattr("sys.stderr", Stderr())
    with jit.first_use("Test", "float32", "forward"):
        assert printed.wait(60)          # the call "compiles" until the notice is out
    assert said.getvalue().startswith("gatedrnn: compiling the Test float32 forward kernel")
    assert said.getvalue().count("\n") == 1
    timers = []
    monkeypatch.setattr(jit.threading, "Timer", lambda *a: timers.append(a))
    with jit.first_use("Test", "float32", "forward"):   # a later call: no timer, no notice
        pass
    assert timers == []
