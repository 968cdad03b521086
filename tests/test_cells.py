"""Tests for gatedrnn.cells, each against something trusted:

- the paper variant against a float64 numpy loop written here from the paper's equations;
- the torch variant against torch.nn (values, gradients, packed sequences);
- gradients against torch.autograd.gradcheck;
- padded batches against each sequence run alone;
- parameter counts against Table 1 and torch.nn's own counts.
"""
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from gatedrnn.cells import CELLS, GRU, LSTM, UNITS, TanhRNN, count_parameters
from gatedrnn.errors import UserError

NAMES = list(CELLS)
VARIANTS = ["paper", "torch"]
TIGHT = dict(rtol=1e-12, atol=1e-12)
EXACT = dict(rtol=0, atol=0)
T, B, I, H = 5, 3, 4, 3  # tiny sizes for value tests


# -- helpers -------------------------------------------------------------------------------------

def randomize_(module, seed, scale=0.5):
    """Overwrite every parameter with N(0, scale^2) so zero biases/peepholes hide nothing."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def make(name, variant, input_size=I, hidden_size=H, seed=0, **kwargs):
    unit = CELLS[name](input_size, hidden_size, variant=variant, **kwargs).double()
    return randomize_(unit, seed)


def n_states(name):
    return 2 if name == "lstm" else 1


def rand(*shape, seed, scale=1.0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_(requires_grad)


def rand_state(name, batch, hidden=H, seed=100, requires_grad=False):
    """Initial state as torch.nn wants it: (1, B, H), or a tuple (h, c) for the LSTM."""
    parts = tuple(rand(1, batch, hidden, seed=seed + k, requires_grad=requires_grad)
                  for k in range(n_states(name)))
    return parts[0] if len(parts) == 1 else parts


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


def pack(parts):
    return parts[0] if len(parts) == 1 else tuple(parts)


def weighted_loss(output, state, seed=7):
    """A loss that weights every output and final-state entry differently."""
    loss = (output * rand(*output.shape, seed=seed)).sum()
    for k, s in enumerate(as_tuple(state)):
        loss = loss + (s * rand(*s.shape, seed=seed + 1 + k)).sum()
    return loss


# -- 1. paper variant vs an independent numpy loop (the paper's equations) -----------------------

def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def paper_reference(name, params, x, state):
    """The paper's equations in float64 numpy, one line per gate.

    params: numpy arrays with the documented layout (blocks stacked along dim 0; GRU (r, z, n),
    LSTM (i, f, g, o); peephole rows (V_i, V_f, V_o)). x (T, B, I); state: h0 (B, H) or (h0, c0).
    Returns outputs (T, B, H) and the final state (h,) or (h, c).
    """
    W, U, b = params["weight_ih"], params["weight_hh"], params["bias"]
    Hs = U.shape[1]

    def blocks(M, n):
        return [M[k * Hs:(k + 1) * Hs] for k in range(n)]

    outputs = []
    if name == "tanh":
        (h,) = state
        for x_t in x:
            h = np.tanh(x_t @ W.T + h @ U.T + b)
            outputs.append(h)
        return np.stack(outputs), (h,)
    if name == "gru":
        (W_r, W_z, W_n), (U_r, U_z, U_n), (b_r, b_z, b_n) = blocks(W, 3), blocks(U, 3), blocks(b, 3)
        (h,) = state
        for x_t in x:
            z = sigmoid(x_t @ W_z.T + h @ U_z.T + b_z)
            r = sigmoid(x_t @ W_r.T + h @ U_r.T + b_r)
            h_tilde = np.tanh(x_t @ W_n.T + (r * h) @ U_n.T + b_n)   # reset before U
            h = (1 - z) * h + z * h_tilde
            outputs.append(h)
        return np.stack(outputs), (h,)
    assert name == "lstm"
    (W_i, W_f, W_c, W_o), (U_i, U_f, U_c, U_o), (b_i, b_f, b_c, b_o) = (
        blocks(W, 4), blocks(U, 4), blocks(b, 4))
    V_i, V_f, V_o = params["peephole"]
    h, c = state
    for x_t in x:
        i = sigmoid(x_t @ W_i.T + h @ U_i.T + V_i * c + b_i)          # c_{t-1}
        f = sigmoid(x_t @ W_f.T + h @ U_f.T + V_f * c + b_f)          # c_{t-1}
        c_tilde = np.tanh(x_t @ W_c.T + h @ U_c.T + b_c)
        c = f * c + i * c_tilde
        o = sigmoid(x_t @ W_o.T + h @ U_o.T + V_o * c + b_o)          # c_t (new cell)
        h = o * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs), (h, c)


def numpy_params(unit):
    """Layer 0's parameters by their names in the equations (weight_ih_l0 -> weight_ih)."""
    return {k.removesuffix("_l0"): v.detach().numpy().copy() for k, v in unit.named_parameters()}


@pytest.mark.parametrize("name", NAMES)
def test_paper_parameters_have_documented_layout(name):
    unit = CELLS[name](I, H)
    G = CELLS[name].input_blocks
    expected = {"weight_ih_l0": (G * H, I), "weight_hh_l0": (G * H, H), "bias_l0": (G * H,)}
    if name == "lstm":
        expected["peephole_l0"] = (3, H)
    assert {k: tuple(p.shape) for k, p in unit.named_parameters()} == expected


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_paper_variant_matches_numpy_equations(name, batch_first):
    unit = make(name, "paper", batch_first=batch_first, seed=1)
    x = rand(T, B, I, seed=2)
    state = rand_state(name, B, seed=3)
    x_in = x.transpose(0, 1) if batch_first else x
    out, final = unit(x_in, state)
    if batch_first:
        out = out.transpose(0, 1)
    ref_out, ref_final = paper_reference(name, numpy_params(unit), x.numpy(),
                                         tuple(s[0].numpy() for s in as_tuple(state)))
    torch.testing.assert_close(out, torch.from_numpy(ref_out), **TIGHT)
    assert len(as_tuple(final)) == n_states(name)
    for s, r in zip(as_tuple(final), ref_final):
        assert s.shape == (1, B, H)
        torch.testing.assert_close(s[0], torch.from_numpy(r), **TIGHT)


@pytest.mark.parametrize("name", NAMES)
def test_paper_variant_zero_state_default_and_2d_state(name):
    unit = make(name, "paper", seed=4)
    x = rand(T, B, I, seed=5)
    zeros = tuple(np.zeros((B, H)) for _ in range(n_states(name)))
    ref_out, ref_final = paper_reference(name, numpy_params(unit), x.numpy(), zeros)
    out, final = unit(x)
    torch.testing.assert_close(out, torch.from_numpy(ref_out), **TIGHT)
    for s, r in zip(as_tuple(final), ref_final):
        torch.testing.assert_close(s[0], torch.from_numpy(r), **TIGHT)
    # a (B, H) state is accepted and means the same as (1, B, H)
    state = rand_state(name, B, seed=6)
    out3, final3 = unit(x, state)
    out2, final2 = unit(x, pack(tuple(s[0] for s in as_tuple(state))))
    torch.testing.assert_close(out2, out3, **EXACT)
    for a, b in zip(as_tuple(final2), as_tuple(final3)):
        torch.testing.assert_close(a, b, **EXACT)


@pytest.mark.parametrize("name", NAMES)
def test_paper_variant_unbatched(name):
    unit = make(name, "paper", seed=8, batch_first=True)  # batch_first is ignored for 2-D input
    x = rand(T, I, seed=9)
    state = tuple(rand(1, H, seed=10 + k) for k in range(n_states(name)))
    out, final = unit(x, pack(state))
    ref_out, ref_final = paper_reference(name, numpy_params(unit), x.numpy()[:, None],
                                         tuple(s.numpy() for s in state))
    assert out.shape == (T, H)
    torch.testing.assert_close(out, torch.from_numpy(ref_out[:, 0]), **TIGHT)
    for s, r in zip(as_tuple(final), ref_final):
        assert s.shape == (1, H)
        torch.testing.assert_close(s, torch.from_numpy(r), **TIGHT)


# -- 2. torch variant == torch.nn ----------------------------------------------------------------

def torch_module(name, batch_first=False, seed=20, input_size=I, hidden_size=H):
    cls = CELLS[name].torch_class
    kwargs = {"nonlinearity": "tanh"} if cls is nn.RNN else {}
    module = cls(input_size, hidden_size, batch_first=batch_first, **kwargs).double()
    return randomize_(module, seed)


def assert_same_results(reference, ours):
    """(output, final state, input grad, state grads) of two runs agree to TIGHT."""
    (o_ref, f_ref, gx_ref, gs_ref), (o, f, gx, gs) = reference, ours
    torch.testing.assert_close(o, o_ref, **TIGHT)
    for a, b in zip(as_tuple(f), as_tuple(f_ref), strict=True):
        torch.testing.assert_close(a, b, **TIGHT)
    torch.testing.assert_close(gx, gx_ref, **TIGHT)
    for a, b in zip(gs, gs_ref, strict=True):
        torch.testing.assert_close(a, b, **TIGHT)


def assert_same_grads(unit, module, rtol=1e-12, atol=1e-12):
    names = {n for n, _ in unit.named_parameters()}
    assert names == {n for n, _ in module.named_parameters()}
    for n, p in unit.named_parameters():
        q = getattr(module, n)
        assert p.grad is not None and q.grad is not None
        torch.testing.assert_close(p.grad, q.grad, rtol=rtol, atol=atol)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_from_torch_matches_torch_nn_values_and_grads(name, batch_first):
    module = torch_module(name, batch_first)
    unit = CELLS[name].from_torch(module)
    assert type(unit) is CELLS[name] and unit.variant == "torch"
    assert unit.batch_first == batch_first and unit.weight_ih_l0.dtype == torch.float64
    shape = (B, T, I) if batch_first else (T, B, I)
    results = []
    for m in (module, unit):
        x = rand(*shape, seed=21, requires_grad=True)
        state = rand_state(name, B, seed=22, requires_grad=True)
        out, final = m(x, state)
        weighted_loss(out, final).backward()
        results.append((out, final, x.grad, [s.grad for s in as_tuple(state)]))
    assert_same_results(*results)
    assert_same_grads(unit, module)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_to_torch_round_trips_exactly(name, batch_first):
    unit = make(name, "torch", batch_first=batch_first, seed=30)
    module = unit.to_torch()
    assert type(module) is CELLS[name].torch_class
    assert (module.num_layers, module.bidirectional, module.batch_first) == (1, False, batch_first)
    if name == "tanh":
        assert module.nonlinearity == "tanh"
    assert {n for n, _ in module.named_parameters()} == {n for n, _ in unit.named_parameters()}
    for n, p in unit.named_parameters():
        q = getattr(module, n)
        assert q.dtype == torch.float64
        assert torch.equal(p, q)
    back = CELLS[name].from_torch(module)
    for (n, p), (n2, p2) in zip(unit.named_parameters(), back.named_parameters(), strict=True):
        assert n == n2 and torch.equal(p, p2)
    x = rand(*((B, T, I) if batch_first else (T, B, I)), seed=31)
    out, _ = unit(x)
    out_ref, _ = module(x)
    torch.testing.assert_close(out, out_ref, **TIGHT)


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_torch_variant_unbatched_like_torch_nn(name, with_state):
    module = torch_module(name, batch_first=True, seed=40)
    unit = CELLS[name].from_torch(module)
    results = []
    for m in (module, unit):
        x = rand(T, I, seed=41, requires_grad=True)
        state = tuple(rand(1, H, seed=42 + k, requires_grad=True) for k in range(n_states(name)))
        out, final = m(x, pack(state)) if with_state else m(x)
        weighted_loss(out, final).backward()
        results.append((out, final, x.grad, [s.grad for s in state]))
    (o_ref, f_ref, gx_ref, gs_ref), (o, f, gx, gs) = results
    assert o.shape == o_ref.shape == (T, H)
    torch.testing.assert_close(o, o_ref, **TIGHT)
    for a, b in zip(as_tuple(f), as_tuple(f_ref), strict=True):
        assert a.shape == b.shape == (1, H)
        torch.testing.assert_close(a, b, **TIGHT)
    torch.testing.assert_close(gx, gx_ref, **TIGHT)
    if with_state:
        for a, b in zip(gs, gs_ref, strict=True):
            torch.testing.assert_close(a, b, **TIGHT)
    assert_same_grads(unit, module)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_torch_variant_lengths_match_packed_sequences(name, batch_first):
    """torch.nn on a PackedSequence never sees the padding: the trusted reference for lengths."""
    lengths = torch.tensor([T, 2, 4])
    module = torch_module(name, batch_first, seed=50)
    unit = CELLS[name].from_torch(module)
    shape = (B, T, I) if batch_first else (T, B, I)
    results = []
    for m in (module, unit):
        x = rand(*shape, seed=51, requires_grad=True)
        state = rand_state(name, B, seed=52, requires_grad=True)
        if m is module:
            packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
            out, final = m(packed, state)
            out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
        else:
            out, final = m(x, state, lengths=lengths)
        weighted_loss(out, final).backward()
        results.append((out, final, x.grad, [s.grad for s in as_tuple(state)]))
    assert_same_results(*results)
    assert_same_grads(unit, module)


# -- 3. gradcheck --------------------------------------------------------------------------------

GRADCHECK_CASES = ["state", "no_state", "lengths", "mask_batch_first", "noise_eval", "noise_seeded"]


@pytest.mark.parametrize("case", GRADCHECK_CASES)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", NAMES)
def test_gradcheck(name, variant, case):
    Tg, Bg, Ig, Hg = 3, 2, 2, 2
    batch_first = case == "mask_batch_first"
    noise = 0.3 if case.startswith("noise") else 0.0
    unit = make(name, variant, Ig, Hg, seed=60, batch_first=batch_first, weight_noise=noise)
    if case == "noise_eval":
        unit.eval()
    names = [n for n, _ in unit.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in unit.named_parameters()]
    x = rand(*((Bg, Tg, Ig) if batch_first else (Tg, Bg, Ig)), seed=61, requires_grad=True)
    state = [rand(1, Bg, Hg, seed=62 + k, requires_grad=True) for k in range(n_states(name))]
    if case == "no_state":
        state = []
    kwargs = {}
    if case == "lengths":
        kwargs["lengths"] = torch.tensor([Tg, 1])
    if case == "mask_batch_first":
        kwargs["mask"] = torch.tensor([[True, True, False], [True, False, False]])  # (B, T)
    k = len(state)

    def f(x, *rest):
        if case == "noise_seeded":
            torch.manual_seed(0)  # the same noise draw at every call: a deterministic function
        st = pack(rest[:k]) if k else None
        out, final = torch.func.functional_call(unit, dict(zip(names, rest[k:])), (x, st), kwargs)
        return (out,) + as_tuple(final)

    assert torch.autograd.gradcheck(f, (x, *state, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


# -- 4. padding ----------------------------------------------------------------------------------

def run_with_grads(unit, x, state, loss_seeds, **kwargs):
    """Forward, weighted loss, backward. Returns out, final state, x.grad, state grads, param grads."""
    unit.zero_grad()
    x = x.detach().clone().requires_grad_()
    state = tuple(s.detach().clone().requires_grad_() for s in state)
    out, final = unit(x, pack(state), **kwargs)
    weighted_loss(out, final, seed=loss_seeds).backward()
    grads = {n: p.grad.clone() for n, p in unit.named_parameters()}
    return out.detach(), tuple(s.detach() for s in as_tuple(final)), x.grad, [s.grad for s in state], grads


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", NAMES)
def test_padded_batch_equals_each_sequence_alone(name, variant, batch_first):
    Tp, lengths = 6, [6, 2, 4]
    Bp = len(lengths)
    unit = make(name, variant, seed=70, batch_first=batch_first)
    x = rand(Tp, Bp, I, seed=71)                                  # (T, B, I)
    state = tuple(s for s in as_tuple(rand_state(name, Bp, seed=72)))
    w_out = rand(Tp, Bp, H, seed=73)
    w_fin = [rand(1, Bp, H, seed=74 + k) for k in range(n_states(name))]

    def loss(out, final, b, L):
        """Sum over sequences b of their own loss; out (L, 1, H) time-major."""
        value = (out * w_out[:L, b:b + 1]).sum()
        return value + sum((s * w[:, b:b + 1]).sum() for s, w in zip(final, w_fin))

    # each sequence alone, gradients summed over sequences
    unit.zero_grad()
    alone_out, alone_final, alone_gx, alone_gs = [], [], [], []
    for b, L in enumerate(lengths):
        xb = x[:L, b:b + 1].clone().requires_grad_()
        sb = tuple(s[:, b:b + 1].clone().requires_grad_() for s in state)
        out, final = unit(xb.transpose(0, 1) if batch_first else xb, pack(sb))
        out = out.transpose(0, 1) if batch_first else out
        loss(out, as_tuple(final), b, L).backward()
        alone_out.append(out.detach())
        alone_final.append([s.detach() for s in as_tuple(final)])
        alone_gx.append(xb.grad)
        alone_gs.append([s.grad for s in sb])
    alone_grads = {n: p.grad.clone() for n, p in unit.named_parameters()}

    # the padded batch, with garbage in the padding
    padded = x.clone()
    for b, L in enumerate(lengths):
        padded[L:, b] = rand(Tp - L, I, seed=75 + b, scale=100.0)
    unit.zero_grad()
    xp = (padded.transpose(0, 1) if batch_first else padded).clone().requires_grad_()
    sp = tuple(s.clone().requires_grad_() for s in state)
    out, final = unit(xp, pack(sp), lengths=torch.tensor(lengths))
    out_tm = out.transpose(0, 1) if batch_first else out
    sum(loss(out_tm[:L, b:b + 1], [s[:, b:b + 1] for s in as_tuple(final)], b, L)
        for b, L in enumerate(lengths)).backward()
    gx = xp.grad.transpose(0, 1) if batch_first else xp.grad

    for b, L in enumerate(lengths):
        torch.testing.assert_close(out_tm[:L, b:b + 1], alone_out[b], **TIGHT)
        assert torch.count_nonzero(out_tm[L:, b]) == 0            # padded outputs are zero
        for s, r in zip(as_tuple(final), alone_final[b]):
            torch.testing.assert_close(s[:, b:b + 1], r, **TIGHT)
        torch.testing.assert_close(gx[:L, b:b + 1], alone_gx[b], **TIGHT)
        assert torch.count_nonzero(gx[L:, b]) == 0                # padding gets no gradient
        for s, r in zip(sp, alone_gs[b]):
            torch.testing.assert_close(s.grad[:, b:b + 1], r, **TIGHT)
    for n, p in unit.named_parameters():
        torch.testing.assert_close(p.grad, alone_grads[n], **TIGHT)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", NAMES)
def test_padding_values_change_nothing(name, variant):
    lengths = torch.tensor([T, 1, 3])
    unit = make(name, variant, seed=80)
    x = rand(T, B, I, seed=81)
    state = as_tuple(rand_state(name, B, seed=82))
    runs = []
    for k, scale in enumerate([0.0, 1.0, 1e3]):
        xk = x.clone()
        for b, L in enumerate(lengths.tolist()):
            xk[L:, b] = rand(T - L, I, seed=83 + 10 * k + b, scale=scale)
        runs.append(run_with_grads(unit, xk, state, 90, lengths=lengths))
    ref = runs[0]
    for run in runs[1:]:
        torch.testing.assert_close(run[0], ref[0], **EXACT)
        for a, b in zip(run[1], ref[1]):
            torch.testing.assert_close(a, b, **EXACT)
        torch.testing.assert_close(run[2], ref[2], **EXACT)
        for a, b in zip(run[3], ref[3]):
            torch.testing.assert_close(a, b, **EXACT)
        for n in ref[4]:
            torch.testing.assert_close(run[4][n], ref[4][n], **EXACT)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", NAMES)
def test_mask_equals_lengths(name, variant, batch_first):
    lengths = torch.tensor([2, T, 4])
    unit = make(name, variant, seed=100, batch_first=batch_first)
    x = rand(*((B, T, I) if batch_first else (T, B, I)), seed=101)
    state = as_tuple(rand_state(name, B, seed=102))
    mask = torch.arange(T).unsqueeze(1) < lengths.unsqueeze(0)        # (T, B)
    if batch_first:
        mask = mask.T                                                 # (B, T) like the input
    by_lengths = run_with_grads(unit, x, state, 103, lengths=lengths)
    by_mask = run_with_grads(unit, x, state, 103, mask=mask)
    torch.testing.assert_close(by_mask[0], by_lengths[0], **EXACT)
    for a, b in zip(by_mask[1], by_lengths[1]):
        torch.testing.assert_close(a, b, **EXACT)
    torch.testing.assert_close(by_mask[2], by_lengths[2], **EXACT)
    for n in by_lengths[4]:
        torch.testing.assert_close(by_mask[4][n], by_lengths[4][n], **EXACT)
    # and lengths really matter: the unpadded run differs
    full = run_with_grads(unit, x, state, 103)
    assert not torch.allclose(full[0], by_lengths[0])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", NAMES)
def test_mask_with_holes_skips_those_steps(name, variant):
    """A masked step carries the state: like deleting that step from the sequence."""
    unit = make(name, variant, seed=110)
    x = rand(T, 1, I, seed=111)
    state = rand_state(name, 1, seed=112)
    keep = torch.tensor([True, False, True, False, True])
    out, final = unit(x, state, mask=keep.unsqueeze(1))
    ref_out, ref_final = unit(x[keep], state)
    torch.testing.assert_close(out[keep], ref_out, **TIGHT)
    assert torch.count_nonzero(out[~keep]) == 0
    for a, b in zip(as_tuple(final), as_tuple(ref_final)):
        torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", NAMES)
def test_zero_length_sequence_keeps_initial_state(name, variant):
    unit = make(name, variant, seed=120)
    x = rand(T, 2, I, seed=121)
    state = as_tuple(rand_state(name, 2, seed=122))
    out, final, gx, gs, _ = run_with_grads(unit, x, state, 123, lengths=torch.tensor([0, T]))
    assert torch.count_nonzero(out[:, 0]) == 0 and torch.count_nonzero(gx[:, 0]) == 0
    for k, (s, s0) in enumerate(zip(final, state)):
        torch.testing.assert_close(s[:, 0], s0[:, 0], **EXACT)
        # d loss / d h0 of the empty sequence is the loss weight on its final state
        torch.testing.assert_close(gs[k][:, 0], rand(1, 2, H, seed=123 + 1 + k)[:, 0], **EXACT)
    alone_out, alone_final = unit(x[:, 1:], pack(tuple(s[:, 1:] for s in state)))
    torch.testing.assert_close(out[:, 1:], alone_out, **TIGHT)
    for a, b in zip(final, as_tuple(alone_final)):
        torch.testing.assert_close(a[:, 1:], b, **TIGHT)


# -- 5. parameter counts (Table 1) ---------------------------------------------------------------

def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name, inputs, hidden, expected", [
    ("lstm", 20, 195, 169_065), ("gru", 20, 227, 168_888), ("tanh", 20, 400, 168_400),  # speech
    # music at 88 inputs, by hand from the equations: 4*(88*36+36^2+36)+3*36, 3*(88*46+46^2+46),
    # 88*100+100^2+100
    ("lstm", 88, 36, 18_108), ("gru", 88, 46, 18_630), ("tanh", 88, 100, 18_900),
])
def test_table1_parameter_counts(name, inputs, hidden, expected):
    assert count(CELLS[name](inputs, hidden)) == expected
    assert count_parameters(CELLS[name], inputs, hidden) == expected
    assert count_parameters(CELLS[name], inputs, hidden, "paper") == expected


@pytest.mark.parametrize("inputs, hidden", [(1, 1), (20, 7), (88, 36), (3, 100)])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", NAMES)
def test_recurrent_params_agrees_with_modules(name, variant, inputs, hidden):
    n = count(CELLS[name](inputs, hidden, variant=variant))
    assert count_parameters(CELLS[name], inputs, hidden, variant) == n
    if variant == "torch":  # the torch variant has exactly torch.nn's parameters
        assert n == count(torch_module(name, input_size=inputs, hidden_size=hidden))


# -- 6. initialisation ---------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", NAMES)
def test_paper_init(name, variant):
    torch.manual_seed(0)
    Hi, Ii = 16, 24
    unit = CELLS[name](Ii, Hi, variant=variant, init="paper")
    w = unit.weight_ih_l0
    assert w.abs().max() <= 0.1
    assert w.abs().max() > 0.09 and w.std() > 0.04    # spread over the interval, not all near 0
    blocks = unit.weight_hh_l0.split(Hi, 0)
    assert len(blocks) == CELLS[name].recurrent_blocks
    eye = torch.eye(Hi)
    for q in blocks:
        torch.testing.assert_close(q.T @ q, eye, rtol=0, atol=1e-5)
        torch.testing.assert_close(q @ q.T, eye, rtol=0, atol=1e-5)
    biases = [p for n, p in unit.named_parameters() if n.startswith("bias")]
    assert len(biases) == (1 if variant == "paper" else 2)
    for p in biases:
        assert torch.count_nonzero(p) == 0


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", NAMES)
def test_torch_init(name, variant):
    torch.manual_seed(0)
    Hi = 16
    k = 1 / math.sqrt(Hi)
    unit = CELLS[name](24, Hi, variant=variant, init="torch")
    for n, p in unit.named_parameters():
        assert p.abs().max() <= k, n
        assert p.abs().max() > 0.5 * k, n                 # filled, not zeros
    everything = torch.cat([p.flatten() for p in unit.parameters()])
    assert everything.abs().max() > 0.95 * k
    assert abs(everything.std().item() - k / math.sqrt(3)) < 0.1 * k   # U(-k, k) has std k/sqrt(3)
    q = unit.weight_hh_l0[:Hi]
    assert not torch.allclose(q.T @ q, torch.eye(Hi), atol=1e-2)     # not the paper's orthogonal


def test_reset_parameters_redraws_paper_init():
    torch.manual_seed(0)
    unit = make("gru", "paper", seed=130)                          # random, nonzero biases
    unit.reset_parameters()
    assert torch.count_nonzero(unit.bias_l0) == 0
    assert unit.weight_ih_l0.abs().max() <= 0.1
    q = unit.weight_hh_l0[:H]
    torch.testing.assert_close(q.T @ q, torch.eye(H, dtype=q.dtype), rtol=0, atol=1e-6)


# -- 7. weight noise -----------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", NAMES)
def test_weight_noise_train_and_eval(name, variant):
    noisy = make(name, variant, seed=140, weight_noise=0.2)
    clean = make(name, variant, seed=140)
    assert noisy.training
    before = {n: p.detach().clone() for n, p in noisy.named_parameters()}
    x = rand(T, B, I, seed=141)
    ref, _ = clean(x)
    out1, final1 = noisy(x)
    out2, _ = noisy(x)
    assert (out1 - out2).abs().max() > 1e-3
    assert (out1 - ref).abs().max() > 1e-3 and (out2 - ref).abs().max() > 1e-3
    weighted_loss(out1, final1).backward()
    for n, p in noisy.named_parameters():
        assert torch.equal(p, before[n]), f"{n} was modified by the forward pass"
    noisy.eval()
    out3, f3 = noisy(x)
    out4, f4 = noisy(x)
    torch.testing.assert_close(out3, ref, **EXACT)
    torch.testing.assert_close(out4, ref, **EXACT)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", NAMES)
def test_weight_noise_is_one_gaussian_draw_on_W_and_U(name, variant):
    """With a fixed seed, a training forward equals a noise-free unit whose W and U (not the
    biases or peepholes) got s * N(0, 1) once, for all time steps; the gradients are the same."""
    s = 0.3
    unit = make(name, variant, seed=150, weight_noise=s)
    x = rand(T, B, I, seed=151)
    state = as_tuple(rand_state(name, B, seed=152))
    torch.manual_seed(1234)
    out, final, gx, gs, grads = run_with_grads(unit, x, state, 153)
    fixed = make(name, variant, seed=150)   # built first: its init draws from the global RNG
    torch.manual_seed(1234)
    with torch.no_grad():
        fixed.weight_ih_l0 += s * torch.randn_like(fixed.weight_ih_l0)
        fixed.weight_hh_l0 += s * torch.randn_like(fixed.weight_hh_l0)
    r_out, r_final, r_gx, r_gs, r_grads = run_with_grads(fixed, x, state, 153)
    torch.testing.assert_close(out, r_out, **TIGHT)
    for a, b in zip(final, r_final):
        torch.testing.assert_close(a, b, **TIGHT)
    torch.testing.assert_close(gx, r_gx, **TIGHT)
    assert set(grads) == {n for n, _ in unit.named_parameters()}
    for n in grads:
        assert torch.count_nonzero(grads[n]) > 0, f"no gradient reached {n}"
        torch.testing.assert_close(grads[n], r_grads[n], **TIGHT)


# -- 8. errors -----------------------------------------------------------------------------------

def _lstm_state_not_tuple():
    LSTM(I, H)(torch.randn(T, B, I), torch.randn(1, B, H))


ERRORS = [
    ("bad variant", lambda: GRU(I, H, variant="cudnn"),
     r"GRU: variant must be one of paper, torch, got 'cudnn'"),
    ("bad init", lambda: LSTM(I, H, init="xavier"), r"init must be one of paper, torch, got 'xavier'"),
    ("bad hidden size", lambda: TanhRNN(I, 0), r"hidden_size must be a positive integer, got 0"),
    ("bad input size", lambda: GRU(2.5, H), r"input_size must be a positive integer, got 2.5"),
    ("negative noise", lambda: GRU(I, H, weight_noise=-0.1), r"weight_noise must be a number >= 0, got -0.1"),
    ("dropout 1", lambda: GRU(I, H, 2, dropout=1.0), r"GRU: dropout must be a number in \[0, 1\), got 1.0"),
    ("layers 0", lambda: LSTM(I, H, 0), r"LSTM: num_layers must be a positive integer, got 0"),
    ("bidirectional with holes", lambda: GRU(I, H, bidirectional=True)(
        torch.randn(T, B, I), mask=(torch.arange(T).unsqueeze(1) != 1).expand(T, B)),  # a hole
     r"a bidirectional unit needs lengths"),
    ("wrong state layers", lambda: GRU(I, H, 2)(torch.randn(T, B, I), torch.randn(1, B, H)),
     rf"GRU: expected state of shape \(2, {B}, {H}\), got \(1, {B}, {H}\)"),
    ("packed and lengths", lambda: GRU(I, H)(nn.utils.rnn.pack_sequence([torch.randn(3, I)]),
                                            lengths=[3]),
     r"a PackedSequence carries its lengths"),
    ("wrong input size", lambda: GRU(I, H)(torch.randn(T, B, I + 1)),
     rf"GRU: expected input size {I}, got {I + 1}"),
    ("4-D input", lambda: TanhRNN(I, H)(torch.randn(T, B, I, 1)),
     r"TanhRNN: input must be 3-D \(T, B, I\) or 2-D \(T, I\), got shape \(5, 3, 4, 1\)"),
    ("wrong state batch", lambda: GRU(I, H)(torch.randn(T, B, I), torch.randn(1, B + 1, H)),
     rf"GRU: expected state of shape \(1, {B}, {H}\) or \({B}, {H}\), got \(1, {B + 1}, {H}\)"),
    ("wrong state size", lambda: TanhRNN(I, H)(torch.randn(T, B, I), torch.randn(1, B, H + 1)),
     rf"TanhRNN: expected state of shape \(1, {B}, {H}\) or \({B}, {H}\), got \(1, {B}, {H + 1}\)"),
    ("wrong cell state", lambda: LSTM(I, H)(torch.randn(T, B, I),
                                            (torch.randn(1, B, H), torch.randn(1, B, H + 1))),
     rf"LSTM: expected state of shape \(1, {B}, {H}\)"),
    ("LSTM state not a tuple", _lstm_state_not_tuple, r"LSTM: state must be a tuple of 2 tensors \(h, c\)"),
    ("LSTM state stacked", lambda: LSTM(I, H)(torch.randn(T, B, I), torch.randn(2, B, H)),
     r"LSTM: state must be a tuple of 2 tensors \(h, c\)"),
    ("unbatched state shape", lambda: GRU(I, H)(torch.randn(T, I), torch.randn(2, H)),
     rf"GRU: expected state of shape \(1, {H}\), got \(2, {H}\)"),
    ("fractional lengths", lambda: GRU(I, H)(torch.randn(T, B, I), lengths=torch.tensor([2.5, 1.0, 1.0])),
     r"lengths must be integers, got torch.float32"),
    ("no time steps", lambda: GRU(I, H)(torch.randn(0, B, I)), r"GRU: input has no time steps"),
    ("bool hidden size", lambda: GRU(I, True), r"hidden_size must be a positive integer, got True"),
    ("noise not a number", lambda: GRU(I, H, weight_noise="a"), r"weight_noise must be a number >= 0"),
    ("lengths too long", lambda: GRU(I, H)(torch.randn(T, B, I), lengths=[T + 1, 1, 1]),
     rf"lengths must lie in 0..{T}, got \[{T + 1}, 1, 1\]"),
    ("negative length", lambda: GRU(I, H)(torch.randn(T, B, I), lengths=[-1, 1, 1]),
     rf"lengths must lie in 0..{T}"),
    ("lengths shape", lambda: GRU(I, H)(torch.randn(T, B, I), lengths=[1, 2]),
     rf"lengths must have shape \({B},\), got \(2,\)"),
    ("lengths and mask", lambda: GRU(I, H)(torch.randn(T, B, I), lengths=[1, 1, 1],
                                           mask=torch.ones(T, B, dtype=torch.bool)),
     r"give lengths or mask, not both"),
    ("mask shape", lambda: GRU(I, H)(torch.randn(T, B, I), mask=torch.ones(B, T, dtype=torch.bool)),
     rf"mask must have shape \({T}, {B}\), got \({B}, {T}\)"),
    ("mask shape batch_first", lambda: GRU(I, H, batch_first=True)(
        torch.randn(B, T, I), mask=torch.ones(T, B, dtype=torch.bool)),
     rf"mask must have shape \({B}, {T}\)"),
    ("from_torch wrong class", lambda: GRU.from_torch(nn.LSTM(I, H)),
     r"GRU.from_torch expects torch.nn.GRU, got LSTM"),
    ("from_torch not a module", lambda: LSTM.from_torch(nn.Linear(I, H)),
     r"LSTM.from_torch expects torch.nn.LSTM, got Linear"),
    ("from_torch relu", lambda: TanhRNN.from_torch(nn.RNN(I, H, nonlinearity="relu")),
     r"TanhRNN.from_torch expects nonlinearity='tanh'"),
    ("from_torch proj_size", lambda: LSTM.from_torch(nn.LSTM(I, H, proj_size=2)),
     r"LSTM.from_torch does not support proj_size"),
    ("to_torch paper GRU", lambda: GRU(I, H).to_torch(),
     r"to_torch needs variant='torch'; the paper GRU has no torch.nn equivalent"),
    ("to_torch paper LSTM", lambda: LSTM(I, H, variant="paper").to_torch(),
     r"to_torch needs variant='torch'; the paper LSTM"),
]


@pytest.mark.parametrize("make_error, message", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_user_errors(make_error, message):
    with pytest.raises(UserError, match=message):
        make_error()


def test_user_error_is_a_value_error():
    assert issubclass(UserError, ValueError)
    with pytest.raises(ValueError):
        GRU(I, H, variant="nope")


@pytest.mark.parametrize("variant", VARIANTS)
def test_registry(variant):
    assert CELLS == {"tanh": TanhRNN, "gru": GRU, "lstm": LSTM}
    assert set(UNITS) == {"tanh", "gru", "lstm", "mut1", "mgu", "mingru", "minlstm", "cifg"}
    assert {n: c.input_blocks for n, c in CELLS.items()} == {"tanh": 1, "gru": 3, "lstm": 4}
    assert {n: c.torch_class for n, c in CELLS.items()} == {
        "tanh": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
    for name, cls in CELLS.items():
        unit = cls(I, H, variant=variant)
        assert (unit.input_size, unit.hidden_size, unit.variant) == (I, H, variant)


@pytest.mark.parametrize("cell", list(CELLS))
def test_nan_in_padding_reaches_no_gradient(cell):
    torch.manual_seed(0)
    unit = CELLS[cell](I, H).double()
    x = torch.randn(T, B, I, dtype=torch.double)
    x[T - 1, 1] = float("nan")                                   # padding of sequence 1
    x[T - 2:, 2] = float("inf")                                  # padding of sequence 2
    out, state = unit(x, lengths=[T, T - 1, T - 2])
    state = state if torch.is_tensor(state) else state[0]
    (out.sum() + state.sum()).backward()
    assert torch.isfinite(out).all()
    for name, p in unit.named_parameters():
        assert torch.isfinite(p.grad).all(), name
