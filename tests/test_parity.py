"""Drop-in parity with torch.nn: torch.nn's constructor arguments (num_layers, bias, batch_first,
dropout, bidirectional, in torch.nn's order), states shaped (num_layers * num_directions, B, H),
PackedSequence in and out, and from_torch / to_torch for every layer and direction. Each test
compares with something trusted:

- the torch variants against torch.nn itself: outputs, final states and the gradients of the
  input, the initial state and every parameter, on a seeded sweep of shapes, lengths, layers and
  directions, padded (with lengths), packed and unbatched, on both backends, float64 to 1e-10
  and float32 to 1e-5 relative; dropout between layers drawn from the global RNG as torch.nn
  draws it;
- every registered unit's fast backend against its reference loop, on stacked bidirectional
  units, and a stacked bidirectional unit against single-layer units composed by hand;
- weight noise and the paper's initialisation against hand-made equivalents, layer by layer;
- a word_language_model-style RNNModel (pytorch/examples) with gatedrnn's GRU / LSTM in place of
  torch.nn's, against the same model on torch.nn; and the example script, run tiny.
"""
import importlib.util
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import gatedrnn
from gatedrnn.cells import CELLS, UNITS, count_parameters
from gatedrnn.errors import UserError


class Leaky(gatedrnn.RecurrentUnit):
    """A user's unit through the unit API, with no fast path: h_t = a h_{t-1} + (1 - a) tanh(W x_t
    + U h_{t-1} + b), a = sigmoid(leak) per unit."""

    def extra_parameters(self):
        return {"leak": (self.hidden_size,)}

    def step(self, xw, state, w):
        (h,) = state
        a = torch.sigmoid(w["leak"])
        return (a * h + (1 - a) * torch.tanh(xw + h @ w["weight_hh"].T),)


NAMES = list(CELLS)                                       # the units with a torch.nn twin
ALL_UNITS = {**UNITS, "leaky": Leaky}                     # every registered unit, and a user's
UNIT_VARIANTS = [(n, v) for n, cls in ALL_UNITS.items() for v in cls.variants]
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "word_language_model.py"


# -- helpers -------------------------------------------------------------------------------------

def randomize_(module, seed):
    """Every parameter N(0, s^2), s = min(0.5, 1/sqrt(H)): nonzero biases and peepholes, and a
    gain near 1 so float32 rounding is not amplified."""
    g = torch.Generator().manual_seed(seed)
    scale = min(0.5, 1 / math.sqrt(module.hidden_size))
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return module


def randn(*shape, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def as_tuple(state):
    return tuple(state) if isinstance(state, (tuple, list)) else (state,)


def pack(parts):
    return parts[0] if len(parts) == 1 else tuple(parts)


def assert_close(a, b, dtype):
    """Equal to TOL[dtype] relative to the larger of 1 and b's largest entry."""
    assert a.dtype == b.dtype == dtype and a.shape == b.shape
    tol = TOL[dtype]
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * max(1.0, b.abs().max().item()))


def run(module, x, state, seed, **kwargs):
    """Forward, a loss weighting every output and final-state entry differently, backward.
    x and state are leaves to differentiate; returns (output, final state tuple, grads), the
    grads by name: "input", "state{k}" and every parameter's."""
    module.zero_grad()
    x = x.detach().clone().requires_grad_()
    state = None if state is None else tuple(s.detach().clone().requires_grad_() for s in state)
    out, final = module(x, None if state is None else pack(state), **kwargs)
    loss = (out * randn(*out.shape, seed=seed, dtype=out.dtype)).sum()
    for k, s in enumerate(as_tuple(final)):
        loss = loss + (s * randn(*s.shape, seed=seed + 1 + k, dtype=s.dtype)).sum()
    loss.backward()
    grads = {"input": x.grad, **{f"state{k}": s.grad for k, s in enumerate(state or ())}}
    grads.update((n, p.grad) for n, p in module.named_parameters())
    return out, as_tuple(final), grads


def assert_same_run(ours, reference, dtype):
    (out, final, grads), (r_out, r_final, r_grads) = ours, reference
    assert_close(out, r_out, dtype)
    assert len(final) == len(r_final)
    for a, b in zip(final, r_final):
        assert_close(a, b, dtype)
    assert list(grads) == list(r_grads)                  # same parameters, in the same order
    for n in grads:
        assert grads[n] is not None and r_grads[n] is not None, f"no gradient reached {n}"
        assert_close(grads[n], r_grads[n], dtype)


def torch_module(name, *args, seed, dtype=torch.float64, **kwargs):
    """nn.RNN / nn.GRU / nn.LSTM (torch.nn's own arguments), random parameters."""
    module = CELLS[name].torch_class(*args, **kwargs, dtype=dtype)
    return randomize_(module, seed)


def reverse_within(x, lengths):
    """x (T, B, F) with each sequence b reversed within its first lengths[b] steps, by hand."""
    return torch.stack([torch.cat([x[:L, b].flip(0), x[L:, b]]) for b, L in enumerate(lengths)], 1)


# -- 1. the torch variants against torch.nn: a seeded sweep --------------------------------------

KINDS = ["padded", "packed_sorted", "packed_unsorted", "unbatched"]
SETUPS = [("fast", torch.float64), ("fast", torch.float32),
          ("reference", torch.float64), ("reference", torch.float32)]


def sweep_case(seed):
    """A random configuration: layers, directions, layout, bias, mode and sizes."""
    r = random.Random(seed)
    layers, bidirectional = r.randint(1, 3), r.random() < 0.6
    training = r.random() < 0.5
    return dict(num_layers=layers, bidirectional=bidirectional, batch_first=r.random() < 0.5,
                bias=r.random() < 0.75, training=training,
                dropout=0.0 if training or layers == 1 else 0.4,      # eval: dropout is ignored
                T=r.randint(1, 7), B=r.randint(1, 5), I=r.randint(1, 5), H=r.randint(1, 6),
                with_state=r.random() < 0.6, lengths_seed=r.randrange(1 << 30))


def run_torch_and_ours(name, kind, backend, dtype, case, seed):
    """(ours, torch.nn's) runs of one configuration; for packed kinds also both outputs."""
    c = case
    D, bf = 2 if c["bidirectional"] else 1, c["batch_first"] and kind != "unbatched"
    module = torch_module(name, c["I"], c["H"], c["num_layers"], bias=c["bias"],
                          batch_first=c["batch_first"], dropout=c["dropout"],
                          bidirectional=c["bidirectional"], seed=seed, dtype=dtype)
    rng_before = torch.get_rng_state()
    unit = CELLS[name].from_torch(module)
    assert torch.equal(torch.get_rng_state(), rng_before)
    unit.backend = backend
    module.train(c["training"]), unit.train(c["training"])
    T, B, I, H = c["T"], c["B"], c["I"], c["H"]
    r = random.Random(c["lengths_seed"])
    lengths = torch.tensor([r.randint(1, T) for _ in range(B)])
    if kind == "packed_sorted":
        lengths = lengths.sort(descending=True).values
    shape = (T, I) if kind == "unbatched" else (B, T, I) if bf else (T, B, I)
    x = randn(*shape, seed=seed + 1, dtype=dtype)
    state_shape = (c["num_layers"] * D, H) if kind == "unbatched" else (c["num_layers"] * D, B, H)
    state = (tuple(randn(*state_shape, seed=seed + 2 + k, dtype=dtype)
                   for k in range(unit.n_states)) if c["with_state"] else None)

    if kind == "padded":                   # torch.nn sees the same data packed
        def torch_padded(x, state):
            p = pack_padded_sequence(x, lengths, batch_first=bf, enforce_sorted=False)
            out, final = module(p, state)
            return pad_packed_sequence(out, batch_first=bf, total_length=T)[0], final
        theirs = run(Wrapped(torch_padded, module), x, state, seed + 10)
        return run(unit, x, state, seed + 10, lengths=lengths), theirs, None
    if kind == "unbatched":
        return run(unit, x, state, seed + 10), run(module, x, state, seed + 10), None
    outputs = []

    def packed(m):
        """m on x packed (inside, so that x's gradient is the padded one); its output kept."""
        def forward(x, state):
            out, final = m(pack_padded_sequence(x, lengths, batch_first=bf,
                                                enforce_sorted=kind == "packed_sorted"), state)
            outputs.append(out)
            return out.data, final
        return Wrapped(forward, m)

    ours, theirs = run(packed(unit), x, state, seed + 10), run(packed(module), x, state, seed + 10)
    return ours, theirs, outputs


class Wrapped(nn.Module):
    """fn(x, state) -> (output, final state), reporting ``module``'s parameters (for ``run``)."""

    def __init__(self, fn, module):
        super().__init__()
        self.fn, self.inner = fn, [module]              # a list: not registered as a submodule

    def forward(self, x, state):
        return self.fn(x, state)

    def named_parameters(self, *args, **kwargs):
        return self.inner[0].named_parameters(*args, **kwargs)

    def zero_grad(self, *args, **kwargs):
        self.inner[0].zero_grad(*args, **kwargs)


@pytest.mark.parametrize("backend, dtype", SETUPS, ids=[f"{b}-{str(d)[6:]}" for b, d in SETUPS])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", NAMES)
def test_from_torch_matches_torch_nn(name, kind, backend, dtype):
    """Random layers (1-3), directions, batch_first, bias, eval (dropout ignored) or training
    (dropout 0), sizes and lengths: ours equals torch.nn in output, final state and every
    gradient, (a) padded with lengths against torch.nn on the same data packed, (b) a
    PackedSequence to both, enforce_sorted True and False, (c) unbatched."""
    seed = 1000 * NAMES.index(name) + 100 * KINDS.index(kind) + 10 * SETUPS.index((backend, dtype))
    case = sweep_case(seed)
    ours, theirs, packed = run_torch_and_ours(name, kind, backend, dtype, case, seed)
    assert_same_run(ours, theirs, dtype)
    D = 2 if case["bidirectional"] else 1
    for s in ours[1]:
        assert s.shape == ((case["num_layers"] * D, case["H"]) if kind == "unbatched"
                           else (case["num_layers"] * D, case["B"], case["H"]))
    if packed is not None:
        out, theirs_out = packed
        assert isinstance(out, PackedSequence)
        assert torch.equal(out.batch_sizes, theirs_out.batch_sizes)
        for a, b in ((out.sorted_indices, theirs_out.sorted_indices),
                     (out.unsorted_indices, theirs_out.unsorted_indices)):
            assert (a is None and b is None) or torch.equal(a, b)
        assert_close(out.data, theirs_out.data, dtype)


def test_sweep_covers_layers_directions_and_modes():
    """The sweep's random configurations include each case that matters."""
    cases = [sweep_case(1000 * n + 100 * k + 10 * s)
             for n in range(len(NAMES)) for k in range(len(KINDS)) for s in range(len(SETUPS))]
    assert {c["num_layers"] for c in cases} == {1, 2, 3}
    for key in ("bidirectional", "batch_first", "bias", "training", "with_state"):
        assert {c[key] for c in cases} == {False, True}, key
    assert any(c["dropout"] > 0 and not c["training"] for c in cases)
    assert any(c["num_layers"] >= 2 and c["bidirectional"] for c in cases)


@pytest.mark.parametrize("backend", ["fast", "reference"])
@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_two_layer_bidirectional_from_torch_on_a_packed_batch(name, backend):
    """The issue's done-when: outputs and gradients of torch.nn on a packed batch."""
    case = dict(num_layers=2, bidirectional=True, batch_first=False, bias=True, training=True,
                dropout=0.0, T=6, B=4, I=4, H=5, with_state=True, lengths_seed=3)
    ours, theirs, (out, their_out) = run_torch_and_ours(name, "packed_unsorted", backend,
                                                        torch.float64, case, seed=7)
    assert_same_run(ours, theirs, torch.float64)
    assert isinstance(out, PackedSequence) and out.data.shape == their_out.data.shape
    assert out.data.shape[1] == 10 and ours[1][0].shape == (4, 4, 5)


# -- 2. to_torch / from_torch --------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_to_torch_round_trips_every_layer_and_direction(name, bias):
    """Names, order, values, dtype and arguments survive unit -> torch.nn -> unit, and so does
    the mode (a converted eval-mode module must not start dropping); no random draws."""
    torch.manual_seed(0)
    unit = randomize_(CELLS[name](3, 4, 3, bias=bias, batch_first=True, dropout=0.25,
                                  bidirectional=True, variant="torch").double(), seed=20)
    rng = torch.get_rng_state()
    module = unit.to_torch()
    assert torch.equal(torch.get_rng_state(), rng), "to_torch drew random numbers"
    assert type(module) is CELLS[name].torch_class
    assert (module.input_size, module.hidden_size, module.num_layers, module.bias,
            module.batch_first, module.dropout, module.bidirectional) == (3, 4, 3, bias, True,
                                                                          0.25, True)
    names = [n for n, _ in unit.named_parameters()]
    assert names == [n for n, _ in module.named_parameters()]      # torch.nn's names and order
    assert len(names) == 3 * 2 * (4 if bias else 2)
    assert {n for n in names if n.endswith("_reverse")} == {n + "_reverse" for n in names
                                                            if not n.endswith("_reverse")}
    for n, p in unit.named_parameters():
        assert torch.equal(p, getattr(module, n))
    back = CELLS[name].from_torch(module)
    assert torch.equal(torch.get_rng_state(), rng), "from_torch drew random numbers"
    assert [n for n, _ in back.named_parameters()] == names
    for (n, p), (_, q) in zip(unit.named_parameters(), back.named_parameters()):
        assert torch.equal(p, q) and q.dtype == torch.float64, n
    assert (back.num_layers, back.bias, back.batch_first, back.dropout, back.bidirectional) == (
        3, bias, True, 0.25, True)
    assert module.training and back.training
    unit.eval()
    assert not unit.to_torch().training and not CELLS[name].from_torch(unit.to_torch()).training
    module.eval()
    x = randn(2, 5, 3, seed=21)
    out, final = unit(x)
    r_out, r_final = module(x)
    assert_close(out, r_out, torch.float64)
    for a, b in zip(as_tuple(final), as_tuple(r_final)):
        assert_close(a, b, torch.float64)


# -- 3. every registered unit: fast equals reference; layers are single layers composed ----------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("layers", [2, 3])
@pytest.mark.parametrize("name, variant", UNIT_VARIANTS)
def test_stacked_bidirectional_fast_equals_reference(name, variant, layers, dtype):
    """Outputs, final states and every gradient, on a padded batch with a zero-length
    sequence, batch_first for three layers."""
    T, B, I, H = 6, 4, 3, 5
    bf = layers == 3
    kwargs = dict(batch_first=bf, bidirectional=True, variant=variant)
    ref = randomize_(ALL_UNITS[name](I, H, layers, backend="reference", **kwargs).double(), seed=30)
    fast = ALL_UNITS[name](I, H, layers, backend="fast", **kwargs).double()
    fast.load_state_dict(ref.state_dict())
    ref, fast = ref.to(dtype), fast.to(dtype)
    x = randn(*((B, T, I) if bf else (T, B, I)), seed=31, dtype=dtype)
    state = tuple(randn(2 * layers, B, H, seed=32 + k, dtype=dtype) for k in range(ref.n_states))
    lengths = torch.tensor([T, 0, 2, T - 1])
    runs = [run(u, x, state, seed=33, lengths=lengths) for u in (fast, ref)]
    assert_same_run(*runs, dtype)
    out, final, grads = runs[0]
    assert out.shape == ((B, T, 2 * H) if bf else (T, B, 2 * H))
    assert all(s.shape == (2 * layers, B, H) for s in final)
    for n, g in grads.items():
        assert torch.count_nonzero(g) > 0, f"the gradient of {n} is all zero"


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_parallel_scan_float32_matches_the_loop_on_long_sequences(name):
    """The log-space scan sums terms of size |log A_t| (tens to hundreds) and opposite signs: in
    float32 it lost 1e-3 of the gradients at T = 300; computed in float64, it equals the float32
    loop to 1e-5."""
    T, B, I, H = 300, 3, 3, 5
    ref = randomize_(UNITS[name](I, H, backend="reference"), seed=35)
    fast = UNITS[name](I, H, backend="fast")
    fast.load_state_dict(ref.state_dict())
    x = randn(T, B, I, seed=36, dtype=torch.float32)
    lengths = torch.tensor([T, 150, T - 1])
    runs = [run(u, x, None, seed=37, lengths=lengths) for u in (fast, ref)]
    assert_same_run(*runs, torch.float32)


def single_layer(unit, layer, direction):
    """A one-layer, one-direction unit holding ``unit``'s weights of that layer and direction."""
    width = unit.input_size if layer == 0 else unit.hidden_size * unit.directions
    one = type(unit)(width, unit.hidden_size, variant=unit.variant,
                     backend=unit.backend).to(unit.weight_ih_l0.dtype)
    suffix = f"_l{layer}{'_reverse' if direction else ''}"
    with torch.no_grad():
        for n, p in one.named_parameters():
            p.copy_(getattr(unit, n.removesuffix("_l0") + suffix))
    return one


@pytest.mark.parametrize("name, variant", UNIT_VARIANTS)
def test_two_layer_bidirectional_is_single_layers_composed(name, variant):
    """Layer 0 forward, layer 0 backward on each sequence reversed within its length, their
    outputs concatenated, dropped out with the global RNG (training mode), fed to layer 1 the same
    way: the same outputs, final states (l0, l0_reverse, l1, l1_reverse) and gradients."""
    T, B, I, H = 5, 3, 3, 4
    lengths = [5, 2, 4]
    unit = randomize_(ALL_UNITS[name](I, H, 2, dropout=0.5, bidirectional=True,
                                      variant=variant).double(), seed=40)
    x = randn(T, B, I, seed=41)
    state = tuple(randn(4, B, H, seed=42 + k) for k in range(unit.n_states))
    torch.manual_seed(43)
    ours = run(unit, x, state, seed=44, lengths=torch.tensor(lengths))

    parts = {(k, d): single_layer(unit, k, d) for k in range(2) for d in range(2)}

    def composed(x, state):
        finals, inp = [], x
        for k in range(2):
            outs = []
            for d in range(2):
                s = pack(tuple(part[2 * k + d] for part in as_tuple(state)))
                xd = inp if d == 0 else reverse_within(inp, lengths)
                out, final = parts[k, d](xd, s, lengths=torch.tensor(lengths))
                outs.append(out if d == 0 else reverse_within(out, lengths))
                finals.append(as_tuple(final))
            inp = torch.cat(outs, -1)
            if k == 0:
                inp = F.dropout(inp, 0.5, training=True)
        return inp, pack(tuple(torch.cat([f[i] for f in finals]) for i in range(unit.n_states)))

    class Composed(nn.Module):
        def forward(self, x, state):
            return composed(x, as_tuple(state))

        def named_parameters(self, *args, **kwargs):
            for (k, d), part in parts.items():
                for n, p in part.named_parameters():
                    yield n.removesuffix("_l0") + f"_l{k}{'_reverse' if d else ''}", p

        def zero_grad(self, *args, **kwargs):
            for part in parts.values():
                part.zero_grad()

    torch.manual_seed(43)
    by_hand = run(Composed(), x, state, seed=44)
    by_hand = (by_hand[0], by_hand[1], {n: by_hand[2][n] for n in ours[2]})
    assert_same_run(ours, by_hand, torch.float64)
    assert torch.count_nonzero(ours[0][2:, 1]) == 0           # sequence 1 ends after 2 steps


# -- 4. dropout between layers -------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["padded", "packed"])
@pytest.mark.parametrize("batch_first, bidirectional", [(False, False), (True, True)])
@pytest.mark.parametrize("name", NAMES)
def test_dropout_draws_like_torch_nn(name, batch_first, bidirectional, kind):
    """Training mode, dropout=0.5, the same seed: torch.nn's CPU implementation drops each
    layer's output but the last with F.dropout's draws from the global RNG (over the packed data
    for a PackedSequence); ours gives the same outputs and gradients, and consumes the RNG alike."""
    T, B, I, H = 6, 3, 3, 4
    module = torch_module(name, I, H, 2, dropout=0.5, batch_first=batch_first,
                          bidirectional=bidirectional, seed=50)
    unit = CELLS[name].from_torch(module)
    x = randn(*((B, T, I) if batch_first else (T, B, I)), seed=51)
    lengths = torch.tensor([4, T, 2])

    def on(m):
        def forward(x, state):
            if kind == "padded":
                return m(x, state)
            out, final = m(pack_padded_sequence(x, lengths, batch_first=batch_first,
                                                enforce_sorted=False), state)
            return out.data, final
        return Wrapped(forward, m)

    results, rng_after = [], []
    for m in (unit, module):
        torch.manual_seed(52)
        results.append(run(on(m), x, None, seed=53))
        rng_after.append(torch.get_rng_state())
    assert_same_run(*results, torch.float64)
    assert torch.equal(*rng_after)
    unit.eval()                                   # and it did drop: eval mode differs
    assert (run(on(unit), x, None, seed=53)[0] - results[0][0]).abs().max() > 1e-3


@pytest.mark.parametrize("name, variant", UNIT_VARIANTS)
def test_dropout_only_between_layers_and_only_in_training(name, variant):
    """Eval mode ignores dropout (the output of dropout=0) and draws nothing; in training mode
    each inner layer's output loses about a fraction p of its entries, the last layer's none."""
    T, B, I, H, p = 20, 8, 3, 16, 0.5
    unit = randomize_(ALL_UNITS[name](I, H, 3, dropout=p, bidirectional=True,
                                      variant=variant).double(), seed=60)
    plain = ALL_UNITS[name](I, H, 3, bidirectional=True, variant=variant).double()
    plain.load_state_dict(unit.state_dict())
    x = randn(T, B, I, seed=61)
    expected, _ = plain(x)
    unit.eval()
    torch.manual_seed(62)
    rng = torch.get_rng_state()
    assert torch.equal(unit(x)[0], expected)
    assert torch.equal(torch.get_rng_state(), rng), "eval mode drew random numbers"

    unit.train()
    inputs = {}
    scan_layer = unit.scan_layer

    def recording(x, state, w, mask, in_bf=False, out_bf=False):
        layer = next(k for k in range(3) if w["weight_ih"] is getattr(unit, f"weight_ih_l{k}")
                     or w["weight_ih"] is getattr(unit, f"weight_ih_l{k}_reverse"))
        inputs.setdefault(layer, x)
        return scan_layer(x, state, w, mask, in_bf, out_bf)

    unit.scan_layer = recording
    out, _ = unit(x)
    assert (out - expected).abs().max() > 1e-3
    assert torch.count_nonzero(out) == out.numel()                 # the last layer: not dropped
    for layer in (1, 2):
        zeros = (inputs[layer] == 0).double().mean().item()
        assert abs(zeros - p) < 0.05, (layer, zeros)               # 2 * 20 * 8 * 16 entries


# -- 5. weight noise and the paper's initialisation, per layer -----------------------------------

@pytest.mark.parametrize("name, variant", UNIT_VARIANTS)
def test_weight_noise_on_every_layers_W_and_U(name, variant):
    """With a fixed seed, a training forward equals a noise-free unit whose W and U of every
    layer and direction (in that order; not biases or peepholes) got s * N(0, 1) once; in eval
    mode there is no noise."""
    s, T, B, I, H = 0.3, 5, 3, 3, 4
    kwargs = dict(bidirectional=True, variant=variant)
    noisy = randomize_(ALL_UNITS[name](I, H, 2, weight_noise=s, **kwargs).double(), seed=70)
    fixed = ALL_UNITS[name](I, H, 2, **kwargs).double()
    fixed.load_state_dict(noisy.state_dict())
    before = {n: p.detach().clone() for n, p in noisy.named_parameters()}
    x, lengths = randn(T, B, I, seed=71), torch.tensor([T, 2, 3])
    torch.manual_seed(72)
    ours = run(noisy, x, None, seed=73, lengths=lengths)
    torch.manual_seed(72)
    with torch.no_grad():
        for k in range(2):
            for d in ("", "_reverse"):
                for w in ("weight_ih", "weight_hh"):
                    if hasattr(fixed, f"{w}_l{k}{d}"):
                        p = getattr(fixed, f"{w}_l{k}{d}")
                        p += s * torch.randn_like(p)
    assert_same_run(ours, run(fixed, x, None, seed=73, lengths=lengths), torch.float64)
    for n, p in noisy.named_parameters():
        assert torch.equal(p, before[n]), f"{n} was changed by the forward pass"
    noisy.eval()
    clean = ALL_UNITS[name](I, H, 2, **kwargs).double()
    clean.load_state_dict(before)
    assert torch.equal(noisy(x, lengths=lengths)[0], clean(x, lengths=lengths)[0])


@pytest.mark.parametrize("name, variant", UNIT_VARIANTS)
def test_paper_init_and_variant_apply_per_layer(name, variant):
    """init="paper" on every layer and direction: W ~ U(-0.1, 0.1), each H x H block of U
    orthogonal, biases 0, peepholes U(-0.1, 0.1), each drawn anew; the variant's parameters (two
    biases for torch, peepholes for the paper's LSTM) in every layer and direction."""
    torch.manual_seed(80)
    H, layers = 8, 3
    unit = ALL_UNITS[name](5, H, layers, bidirectional=True, variant=variant, init="paper")
    per_layer = sorted(unit.layer_shapes(5))
    names = [n for n, _ in unit.named_parameters()]
    assert names == [f"{p}_l{k}{d}" for k in range(layers) for d in ("", "_reverse")
                     for p in unit.layer_shapes(5)]
    assert count_parameters(ALL_UNITS[name], 5, H, variant, layers, True) == sum(
        p.numel() for p in unit.parameters())
    if variant == "torch":
        module = CELLS[name].torch_class(5, H, layers, bidirectional=True)
        assert names == [n for n, _ in module.named_parameters()]
        assert {"bias_ih", "bias_hh"} <= set(per_layer)
    eye = torch.eye(H)
    seen = []
    for full, p in unit.named_parameters():
        kind = full.rsplit("_l", 1)[0]
        if kind == "weight_hh":
            assert len(p.split(H, 0)) == unit.recurrent_blocks
            for q in p.split(H, 0):
                torch.testing.assert_close(q.T @ q, eye, rtol=0, atol=1e-5)
        elif kind.startswith("bias"):
            assert torch.count_nonzero(p) == 0, full
        else:
            assert p.abs().max() <= 0.1 and p.abs().max() > 0.05, full
        if not kind.startswith("bias"):
            assert all(not torch.equal(p, q) for q in seen if q.shape == p.shape), full
            seen.append(p)
    if name == "lstm" and variant == "paper":
        assert sum(n.startswith("peephole") for n in names) == 2 * layers


# -- 6. state shapes and their errors ------------------------------------------------------------

@pytest.mark.parametrize("name, variant", UNIT_VARIANTS)
def test_states_are_layers_times_directions(name, variant):
    T, B, I, H, L = 4, 3, 2, 5, 3
    for bidirectional, D in ((False, 1), (True, 2)):
        unit = ALL_UNITS[name](I, H, L, bidirectional=bidirectional, variant=variant)
        out, final = unit(torch.randn(T, B, I))
        assert out.shape == (T, B, D * H)
        assert len(as_tuple(final)) == unit.n_states and isinstance(final, torch.Tensor) == (
            unit.n_states == 1)
        assert all(s.shape == (L * D, B, H) for s in as_tuple(final))
        again, _ = unit(torch.randn(T, B, I), final)                # the state goes back in
        assert again.shape == (T, B, D * H)
        out, final = unit(torch.randn(T, I))                        # unbatched
        assert out.shape == (T, D * H) and all(s.shape == (L * D, H) for s in as_tuple(final))


def state_error(name, bidirectional, shapes, unbatched=False):
    unit = ALL_UNITS[name](2, 5, 2, bidirectional=bidirectional)
    x = torch.randn(4, 2) if unbatched else torch.randn(4, 3, 2)
    unit(x, pack(tuple(torch.zeros(s) for s in shapes)))


STATE_ERRORS = [
    ("layers only", lambda: state_error("gru", True, [(2, 3, 5)]),
     r"^GRU: expected state of shape \(4, 3, 5\), got \(2, 3, 5\)$"),
    ("2-D for several layers", lambda: state_error("tanh", False, [(3, 5)]),
     r"^TanhRNN: expected state of shape \(2, 3, 5\), got \(3, 5\)$"),
    ("cell state", lambda: state_error("lstm", True, [(4, 3, 5), (2, 3, 5)]),
     r"^LSTM: expected state of shape \(4, 3, 5\), got \(2, 3, 5\)$"),
    ("batch", lambda: state_error("mingru", True, [(4, 2, 5)]),
     r"^MinGRU: expected state of shape \(4, 3, 5\), got \(4, 2, 5\)$"),
    ("unbatched", lambda: state_error("cifg", True, [(2, 5), (2, 5)], unbatched=True),
     r"^CIFG: expected state of shape \(4, 5\), got \(2, 5\)$"),
]


@pytest.mark.parametrize("make_error, message", [e[1:] for e in STATE_ERRORS],
                         ids=[e[0] for e in STATE_ERRORS])
def test_wrong_state_shape_is_a_one_line_user_error(make_error, message):
    with pytest.raises(UserError, match=message) as error:
        make_error()
    assert "\n" not in str(error.value)


def test_torch_nn_argument_order():
    """Positional arguments in torch.nn's order: (input, hidden, num_layers, bias, batch_first,
    dropout, bidirectional); nn.RNN's fourth is the nonlinearity."""
    for name in [n for n in ALL_UNITS if n != "tanh"]:
        unit = ALL_UNITS[name](3, 4, 2, False, True, 0.25, True)
        assert (unit.num_layers, unit.bias, unit.batch_first, unit.dropout,
                unit.bidirectional) == (2, False, True, 0.25, True)
    rnn = gatedrnn.TanhRNN(3, 4, 2, "tanh", False, True, 0.25, True)
    ref = nn.RNN(3, 4, 2, "tanh", False, True, 0.25, True)
    assert (rnn.num_layers, rnn.bias, rnn.batch_first, rnn.dropout, rnn.bidirectional) == (
        ref.num_layers, ref.bias, ref.batch_first, ref.dropout, ref.bidirectional)
    gru = gatedrnn.GRU(3, 4, 2, dropout=0.2)                         # as word_language_model
    assert (gru.num_layers, gru.dropout) == (2, 0.2)


def test_hx_keyword_and_flatten_parameters_as_torch_nn():
    """Code written for torch.nn passes the state as ``hx=`` and calls flatten_parameters()."""
    torch.manual_seed(0)
    ref = nn.LSTM(3, 4, 2)
    ours = gatedrnn.LSTM.from_torch(ref)
    ours.flatten_parameters()
    ref.flatten_parameters()
    x, hx = torch.randn(5, 2, 3), (torch.randn(2, 2, 4), torch.randn(2, 2, 4))
    (out, (h, c)), (out_ref, (h_ref, c_ref)) = ours(x, hx=hx), ref(x, hx=hx)
    for a, b in ((out, out_ref), (h, h_ref), (c, c_ref)):
        torch.testing.assert_close(a, b)


# -- 7. a word_language_model client (pytorch/examples) ------------------------------------------

class RNNModel(nn.Module):
    """pytorch/examples word_language_model's model, with the recurrent layer taken from
    ``rnns`` (torch.nn or gatedrnn): encoder, dropout, recurrent layer, dropout, decoder."""

    def __init__(self, rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.5, rnns=nn):
        super().__init__()
        self.ntoken, self.rnn_type, self.nhid, self.nlayers = ntoken, rnn_type, nhid, nlayers
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = getattr(rnns, rnn_type)(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        decoded = self.decoder(self.drop(output)).view(-1, self.ntoken)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        if self.rnn_type == "LSTM":
            return (weight.new_zeros(self.nlayers, bsz, self.nhid),
                    weight.new_zeros(self.nlayers, bsz, self.nhid))
        return weight.new_zeros(self.nlayers, bsz, self.nhid)


def batchify(data, bsz):
    """Tokens (N,) -> (N // bsz, bsz), one column per stream."""
    nbatch = data.size(0) // bsz
    return data[:nbatch * bsz].view(bsz, -1).t().contiguous()


def get_batch(source, i, bptt):
    seq_len = min(bptt, len(source) - 1 - i)
    return source[i:i + seq_len], source[i + 1:i + 1 + seq_len].reshape(-1)


def repackage_hidden(h):
    """Cut the graph at the batch boundary: the hidden state as new leaves."""
    if isinstance(h, torch.Tensor):
        return h.detach()
    return tuple(repackage_hidden(v) for v in h)


def train_steps(model, source, bsz, bptt=5, lr=5.0, clip=0.25, seed=0):
    """One epoch of word_language_model's train(): plain SGD, hidden carried and detached."""
    torch.manual_seed(seed)
    model.train()
    criterion = nn.NLLLoss()
    hidden = model.init_hidden(bsz)
    losses = []
    for i in range(0, source.size(0) - 1, bptt):
        data, targets = get_batch(source, i, bptt)
        model.zero_grad()
        hidden = repackage_hidden(hidden)
        output, hidden = model(data, hidden)
        loss = criterion(output, targets)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)
        losses.append(loss.item())
    return losses, hidden


@pytest.mark.parametrize("rnn_type", ["GRU", "LSTM"])
def test_word_language_model_drop_in(rnn_type):
    """The client's model with gatedrnn's unit in place of torch.nn's trains as the client
    trains it (hidden carried and detached); with from_torch weights it has torch.nn's
    state_dict names, its loss at step 0 and through an epoch of training steps (dropout drawn
    alike), its final hidden state and its trained parameters."""
    ntoken, ninp, nhid, nlayers, bsz = 30, 8, 12, 2, 4
    tokens = torch.randint(ntoken, (4 * 31,), generator=torch.Generator().manual_seed(90))
    source = batchify(tokens, bsz)                                          # (31, 4)
    torch.manual_seed(91)
    theirs = RNNModel(rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.2)
    ours = RNNModel(rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.2, rnns=gatedrnn)
    assert isinstance(ours.rnn, getattr(gatedrnn, rnn_type))
    assert (ours.rnn.num_layers, ours.rnn.dropout) == (nlayers, 0.2)
    paper_losses, hidden = train_steps(ours, source, bsz)                   # the paper's unit
    assert len(paper_losses) == 6 and all(math.isfinite(v) for v in paper_losses)
    assert all(h.shape == (nlayers, bsz, nhid) for h in as_tuple(hidden))
    assert paper_losses[-1] < paper_losses[0]

    ours.load_state_dict(theirs.state_dict(), strict=False)                # encoder, decoder
    ours.rnn = getattr(gatedrnn, rnn_type).from_torch(theirs.rnn)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)

    ours.eval(), theirs.eval()
    data, targets = get_batch(source, 0, 5)
    with torch.no_grad():
        losses = [F.nll_loss(m(data, m.init_hidden(bsz))[0], targets).item()
                  for m in (ours, theirs)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6, abs=0)        # float32: a few ulps
    assert losses[1] == pytest.approx(math.log(ntoken), rel=0.05)             # untrained

    our_losses, our_hidden = train_steps(ours, source, bsz)
    their_losses, their_hidden = train_steps(theirs, source, bsz)
    assert our_losses[0] != losses[0]                                # training: dropout on
    assert our_losses == pytest.approx(their_losses, rel=1e-5, abs=0)
    for a, b in zip(as_tuple(our_hidden), as_tuple(their_hidden)):
        assert a.shape == b.shape == (nlayers, bsz, nhid)
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-5)
    for (n, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=n)


def test_word_language_model_example_runs(capsys):
    """examples/word_language_model.py, tiny: it trains and its perplexity falls."""
    spec = importlib.util.spec_from_file_location("word_language_model", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    history = example.main(["--model", "LSTM", "--epochs", "3", "--emsize", "16", "--nhid", "16",
                            "--bptt", "10", "--batch-size", "4"])
    printed = capsys.readouterr().out
    assert "perplexity" in printed and len(history) == 3
    first, last = history[0], history[-1]
    assert all(math.isfinite(v) for row in history for v in row[1:])
    assert last[1] < first[1]                              # training perplexity falls
    assert last[2] < len(set(example.tokenize(example.toy_text())))   # beats uniform guessing
