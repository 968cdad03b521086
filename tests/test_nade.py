"""The RNN-NADE head (heads.NADEHead): its parallel NLL against the product rule written out note
by note, normalisation over every configuration, sampling against the exact probabilities,
gradcheck, float32 stability, the registry and argument checks."""
import itertools

import pytest
import torch

from gatedrnn.errors import UserError
from gatedrnn.heads import HEADS, NADEHead
from gatedrnn.model import ModelConfig, SequenceModel


def make_head(hidden, dims, nade_hidden, seed=0, scale=1.0):
    """A float64 head with N(0, scale^2) parameters: larger than the default init, so that the
    conditionals differ clearly from 1/2 and from each other."""
    torch.manual_seed(seed)
    head = NADEHead(hidden, dims, nade_hidden=nade_hidden).double()
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0.0, scale)
    return head


def loop_nll(head, h, v, temperature=1.0):
    """-log p(v | h) by the product rule, one note at a time, with plain log(p) and log(1 - p)
    (float64, moderate logits): (B, T)."""
    b_v = h @ head.visible_bias.weight.t() + head.visible_bias.bias     # (B, T, D)
    b_h = h @ head.hidden_bias.weight.t() + head.hidden_bias.bias       # (B, T, N)
    total = torch.zeros(v.shape[:-1], dtype=h.dtype)
    for d in range(v.shape[-1]):
        a = b_h + v[..., :d] @ head.W[:, :d].t()                         # (B, T, N)
        logit = b_v[..., d] + torch.sigmoid(a) @ head.V[d]               # (B, T)
        p = torch.sigmoid(logit / temperature)
        total = total - torch.where(v[..., d] == 1, torch.log(p), torch.log(1 - p))
    return total


def all_configurations(dims):
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=dims)), dtype=torch.float64)


def test_parallel_nll_and_gradients_equal_the_note_by_note_product_rule():
    head = make_head(hidden=5, dims=6, nade_hidden=4)
    g = torch.Generator().manual_seed(1)
    h = torch.randn(3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    v = (torch.rand(3, 4, 6, generator=g, dtype=torch.float64) < 0.5).double()

    fast = head.nll(head(h), v)                                          # (B, T)
    slow = loop_nll(head, h, v)
    assert fast.shape == (3, 4)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-10)

    weights = torch.randn(3, 4, generator=g, dtype=torch.float64)   # a loss that weighs steps
    inputs = [h, *head.parameters()]
    grads_fast = torch.autograd.grad((fast * weights).sum(), inputs)
    grads_slow = torch.autograd.grad((slow * weights).sum(), inputs)
    for name, a, b in zip(["h", *(n for n, _ in head.named_parameters())], grads_fast, grads_slow):
        assert a.abs().max() > 0, name
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=name)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_probabilities_of_all_configurations_sum_to_one(seed):
    dims = 8
    head = make_head(hidden=3, dims=dims, nade_hidden=5, seed=seed)
    v = all_configurations(dims)                                         # (256, 8)
    h = torch.randn(1, 2, 3, dtype=torch.float64).expand(len(v), 2, 3)   # two random h_t
    nll = head.nll(head(h), v.unsqueeze(1).expand(-1, 2, -1))            # (256, 2)
    total = torch.exp(-nll).sum(0)                                       # (2,)
    torch.testing.assert_close(total, torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-10)
    # not uniform: the test would also pass for a head that ignored its parameters otherwise
    assert torch.exp(-nll).max() > 4 / len(v)


def test_sampling_is_deterministic_for_a_seeded_generator():
    head = make_head(hidden=4, dims=10, nade_hidden=6)
    h = torch.randn(64, 4, dtype=torch.float64)
    draw = lambda seed: head.sample(h, generator=torch.Generator().manual_seed(seed))
    a, b, c = draw(7), draw(7), draw(8)
    assert a.shape == (64, 10) and a.dtype == torch.float64
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    same = head.sample(h, generator=torch.Generator().manual_seed(7), temperature=1.0)
    assert torch.equal(a, same)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_sample_frequencies_match_the_exact_probabilities(temperature):
    """At temperature 1 the draws follow p(v | h) itself (exp(-nll)); at another temperature they
    follow the product of the conditionals with every logit divided by it."""
    dims, n = 3, 20000
    head = make_head(hidden=2, dims=dims, nade_hidden=3, seed=3)
    h = torch.randn(1, 2, dtype=torch.float64)
    configs = all_configurations(dims)                                   # (8, 3)
    exact = torch.exp(-loop_nll(head, h.expand(8, 1, 2), configs.unsqueeze(1), temperature))[:, 0]
    if temperature == 1.0:
        model = torch.exp(-head.nll(head(h.expand(8, 1, 2)), configs.unsqueeze(1)))[:, 0]
        torch.testing.assert_close(exact, model, rtol=0, atol=1e-12)

    samples = head.sample(h.expand(n, 2), generator=torch.Generator().manual_seed(0),
                          temperature=temperature)                       # (n, 3)
    index = (samples * torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)).sum(-1).long()
    freq = torch.bincount(index, minlength=8).double() / n
    sigma = (exact * (1 - exact) / n).sqrt()
    assert ((freq - exact).abs() <= 5 * sigma + 1e-3).all(), (freq, exact)


def test_temperature_must_be_positive():
    head = make_head(hidden=2, dims=3, nade_hidden=2)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(UserError, match="temperature"):
            head.sample(torch.zeros(1, 2, dtype=torch.float64), temperature=bad)


class StepNLL(torch.nn.Module):
    """head.nll(head(h), v) as one module call, so that functional_call can swap its parameters."""

    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward(self, h, v):
        return self.head.nll(self.head(h), v)


def test_gradcheck():
    head = make_head(hidden=3, dims=4, nade_hidden=3, scale=0.5)
    g = torch.Generator().manual_seed(2)
    h = torch.randn(2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    v = (torch.rand(2, 3, 4, generator=g, dtype=torch.float64) < 0.5).double()
    call = StepNLL(head)
    names = [n for n, _ in call.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in call.parameters()]

    def nll(h, *params):
        return torch.func.functional_call(call, dict(zip(names, params)), (h, v), strict=True)

    assert torch.autograd.gradcheck(nll, (h, *params))


def test_float32_stays_finite_where_log_sigmoid_would_not():
    """Visible biases of +-200 make p(v_d = observed) = sigmoid(-200), 0 in float32: the NLL must
    still be the exact 200 per such note, not inf."""
    head = NADEHead(2, 5, nade_hidden=3)
    with torch.no_grad():
        head.visible_bias.weight.zero_()
        head.visible_bias.bias.copy_(torch.tensor([200.0, -200.0, 200.0, -200.0, 200.0]))
        head.V.zero_()
    h = torch.randn(1, 1, 2)
    v = torch.tensor([[[0.0, 1.0, 1.0, 0.0, 0.0]]])     # against, against, with, with, against
    nll = head.nll(head(h), v)
    torch.testing.assert_close(nll, torch.tensor([[600.0]]))


def test_float32_agrees_with_float64():
    head = make_head(hidden=4, dims=12, nade_hidden=8)
    h = torch.randn(2, 5, 4, dtype=torch.float64)
    v = (torch.rand(2, 5, 12, dtype=torch.float64) < 0.3).double()
    ref = head.nll(head(h), v)
    head32 = head.float()
    out = head32.nll(head32(h.float()), v.float())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_on_cuda_as_on_cpu():
    head = make_head(hidden=4, dims=9, nade_hidden=6)
    h = torch.randn(2, 3, 4, dtype=torch.float64)
    v = (torch.rand(2, 3, 9, dtype=torch.float64) < 0.4).double()
    ref = head.nll(head(h), v)
    gpu = head.to("cuda")
    torch.testing.assert_close(gpu.nll(gpu(h.cuda()), v.cuda()).cpu(), ref, rtol=0, atol=1e-10)
    g = torch.Generator(device="cuda").manual_seed(0)
    sample = gpu.sample(h[:, 0].cuda(), generator=g)
    assert sample.device.type == "cuda" and sample.shape == (2, 9)


def test_registered_and_sized():
    assert HEADS["nade"] is NADEHead
    H, D, N = 7, 11, 5
    head = NADEHead(H, D, nade_hidden=N)
    assert sum(p.numel() for p in head.parameters()) == (H + 1) * (D + N) + 2 * D * N
    assert NADEHead(H, D).nade_hidden == NADEHead.DEFAULT_NADE_HIDDEN == 150


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8", True, None])
def test_bad_nade_hidden_is_a_user_error(bad):
    with pytest.raises(UserError, match="nade_hidden") as info:
        NADEHead(4, 5, nade_hidden=bad)
    assert "\n" not in str(info.value)


def test_sequence_model_trains_through_the_nade_head():
    """model.py builds the head from the registry (with its backend argument) and takes a step."""
    config = ModelConfig(cell="gru", hidden_size=6, input_size=10, output_size=10, head="nade",
                         backend="reference")
    model = SequenceModel(config)
    assert isinstance(model.head, NADEHead)
    x = (torch.rand(3, 7, 10) < 0.2).float()
    nll = model.step_nll(x, x, torch.tensor([7, 5, 2]))                  # (B, T)
    assert nll.shape == (3, 7) and torch.isfinite(nll).all()
    assert (nll[1, 5:] == 0).all() and (nll[1, :5] > 0).all()
    nll.sum().backward()
    for name, p in model.head.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


def test_nll_in_chunks_of_steps_equals_all_at_once(monkeypatch):
    """logits() takes a bounded number of steps at a time: the same values and gradients."""
    torch.manual_seed(3)
    head = NADEHead(5, 12, 7).double()
    h = torch.randn(3, 10, 5, dtype=torch.float64, requires_grad=True)
    v = (torch.rand(3, 10, 12) < 0.3).double()
    results = []
    for entries in (1 << 26, 12 * 7 * 4):                # everything at once; 4 steps at a time
        monkeypatch.setattr(NADEHead, "CHUNK_ENTRIES", entries)
        nll = head.nll(head(h), v)
        results.append([nll, *torch.autograd.grad(nll.sum(), [h, *head.parameters()])])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_params_prints_the_heads_of_whole_models(capsys):
    """`gatedrnn params` gives each music unit's head size: that of a built model's head."""
    from gatedrnn.cli import main
    assert main(["params", "--nade-hidden", "20"]) == 0
    out = capsys.readouterr().out
    for head in ("bernoulli", "nade"):
        config = ModelConfig(cell="gru", hidden_size=46, input_size=88, output_size=88, head=head,
                             nade_hidden=20)
        count = sum(p.numel() for p in SequenceModel(config).head.parameters())
        assert f"{count:,}" in out.split("| gru | 46 |")[-1].splitlines()[0]
