"""The recurrent units of Chung et al. (2014), as torch.nn-shaped modules.

Each unit has one readable reference step (one line per gate) and two variants:

- ``variant="paper"`` (default) is exactly PAPER.md section 1:
    tanh:  h_t = tanh(W x_t + U h_{t-1} + b)
    GRU:   z_t = sigmoid(W_z x_t + U_z h_{t-1} + b_z)
           r_t = sigmoid(W_r x_t + U_r h_{t-1} + b_r)
           h~_t = tanh(W_n x_t + U_n (r_t * h_{t-1}) + b_n)      # reset *before* the product
           h_t = (1 - z_t) * h_{t-1} + z_t * h~_t
    LSTM:  Graves (2013) with diagonal peepholes V_i, V_f, V_o:
           i_t = sigmoid(W_i x_t + U_i h_{t-1} + V_i * c_{t-1} + b_i)
           f_t = sigmoid(W_f x_t + U_f h_{t-1} + V_f * c_{t-1} + b_f)
           c_t = f_t * c_{t-1} + i_t * tanh(W_c x_t + U_c h_{t-1} + b_c)
           o_t = sigmoid(W_o x_t + U_o h_{t-1} + V_o * c_t + b_o)  # current cell c_t
           h_t = o_t * tanh(c_t)
  with one bias per gate block, so ``LSTM(20, 195)`` has 169,065 parameters (Table 1).
- ``variant="torch"`` is torch.nn's equations and weight layout: nn.RNN(tanh), nn.GRU with the
  reset gate applied *after* the recurrent product and two bias vectors, nn.LSTM without peepholes.
  ``from_torch`` / ``to_torch`` convert exactly.

Weights are stored like torch.nn, gate blocks stacked along dim 0: ``weight_ih`` (G*H, I),
``weight_hh`` (G*H, H). Gate order is torch's in both variants: GRU (r, z, n), LSTM (i, f, g, o).
"""
import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .errors import UserError
from .kernels import BACKENDS

VARIANTS = ("paper", "torch")
INITS = ("paper", "torch")


class RecurrentUnit(nn.Module):
    """Shared machinery: parameters, argument checks, weight noise and the loop over time.

    ``forward(input, state=None, *, lengths=None, mask=None) -> (output, final_state)``.
    input is (T, B, I), or (B, T, I) with ``batch_first``, or unbatched (T, I). A state is
    (1, B, H) like torch.nn ((h, c) for the LSTM); (B, H) is accepted too. For padded batches
    give ``lengths`` (B,) or a boolean ``mask`` shaped like the input's first two dims: at a
    padded step the state is carried unchanged and the output is zero, so padding changes
    neither outputs, gradients nor the final state (the state after each sequence's last step).
    """

    gates = 1  # gate blocks stacked in weight_ih / weight_hh
    torch_class = nn.RNN
    n_states = 1
    fast_kernels = {"paper": kernels.Tanh, "torch": kernels.Tanh}  # variant -> kernels class

    def __init__(self, input_size, hidden_size, *, batch_first=False, variant="paper",
                 weight_noise=0.0, init="paper", backend="fast"):
        super().__init__()
        if variant not in VARIANTS:
            raise UserError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if backend not in BACKENDS:
            raise UserError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if init not in INITS:
            raise UserError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(weight_noise, (int, float)) or not weight_noise >= 0:
            raise UserError(f"weight_noise must be a number >= 0, got {weight_noise!r}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.batch_first, self.variant, self.init = batch_first, variant, init
        self.backend = backend      # fast: kernels/ (CPU, numba); reference: reference_scan
        self.weight_noise = float(weight_noise)  # std of N(0, s^2) added to W and U per training forward
        G, H = self.gates * hidden_size, hidden_size
        self.weight_ih = nn.Parameter(torch.empty(G, input_size))
        self.weight_hh = nn.Parameter(torch.empty(G, H))
        if variant == "paper":
            self.bias = nn.Parameter(torch.empty(G))
        else:
            self.bias_ih = nn.Parameter(torch.empty(G))
            self.bias_hh = nn.Parameter(torch.empty(G))
        self._extra_parameters()
        self.reset_parameters()

    def _extra_parameters(self):
        pass

    def reset_parameters(self):
        """Paper's code: W ~ U(-0.1, 0.1), each H x H block of U orthogonal, biases 0.
        ``init="torch"``: torch.nn's U(-1/sqrt(H), 1/sqrt(H)) for every parameter."""
        with torch.no_grad():
            if self.init == "torch":
                k = 1.0 / math.sqrt(self.hidden_size)
                for p in self.parameters():
                    p.uniform_(-k, k)
                return
            self.weight_ih.uniform_(-0.1, 0.1)
            for block in self.weight_hh.split(self.hidden_size, 0):
                nn.init.orthogonal_(block)
            for name, p in self.named_parameters():
                if name.startswith("bias"):
                    p.zero_()
                elif name == "peephole":
                    p.uniform_(-0.1, 0.1)

    # -- the equations -------------------------------------------------------------------------

    def step(self, xw, state, w):
        """One time step. xw (B, G*H): W x_t + input bias. state: tuple of (B, H). w: weights."""
        raise NotImplementedError

    def weights(self):
        """The weights used by one forward pass, with weight noise on W and U when training."""
        w = dict(self.named_parameters())
        if self.training and self.weight_noise > 0:
            for name in ("weight_ih", "weight_hh"):
                w[name] = w[name] + self.weight_noise * torch.randn_like(w[name])
        return w

    # -- torch.nn-shaped forward ---------------------------------------------------------------

    def forward(self, input, state=None, *, lengths=None, mask=None):
        unbatched = input.dim() == 2
        if unbatched:
            input = input.unsqueeze(1)
            state = None if state is None else _unsqueeze_state(state, self.n_states)
        elif input.dim() != 3:
            raise UserError(f"{type(self).__name__}: input must be 3-D (T, B, I) or 2-D (T, I), "
                            f"got shape {tuple(input.shape)}")
        x = input.transpose(0, 1) if self.batch_first and not unbatched else input  # (T, B, I)
        T, B, I = x.shape
        if I != self.input_size:
            raise UserError(f"{type(self).__name__}: expected input size {self.input_size}, got {I}")
        if T == 0:
            raise UserError(f"{type(self).__name__}: input has no time steps")
        state = self._initial_state(state, B, x, unbatched)
        mask = _time_mask(lengths, mask, T, B, self.batch_first and not unbatched, x.device)
        w = self.weights()
        backend = self.backend_for(x, w["weight_ih"], *state)
        # (T, B, G*H), all steps at once; padding never reaches the arithmetic, not even as NaN
        batch_first = self.batch_first and not unbatched
        projection = (input if batch_first else x, w["weight_ih"], w[_input_bias_name(self.variant)],
                      mask, batch_first)
        if backend == "fast":     # a piano roll is projected inside the kernels, step by step;
            xw = kernels.project(*projection, fused=True)     # batch-first output in place
            output, state = kernels.scan(self.fast_kernels[self.variant],
                                         partial(reference_scan, self.step), xw, w, state, mask,
                                         batch_first)
        else:
            xw = kernels.dense_project(*projection)
            output, state = reference_scan(self.step, xw, state, w, mask)
            if batch_first:
                output = output.transpose(0, 1)
        if unbatched:
            return output.squeeze(1), _pack_state(tuple(s for s in state), self.n_states)
        return output, _pack_state(tuple(s.unsqueeze(0) for s in state), self.n_states)

    def backend_for(self, *tensors):
        """The backend that runs on such tensors: ``self.backend``, or "reference" (with one
        warning naming the reason) where the fast path cannot serve them."""
        if self.backend == "fast":
            reason = kernels.unsupported(*tensors)
            if reason is None:
                return "fast"
            kernels.warn_once(reason)
        return "reference"

    def _initial_state(self, state, B, x, unbatched):
        H, name = self.hidden_size, type(self).__name__
        if state is None:
            return tuple(x.new_zeros(B, H) for _ in range(self.n_states))
        if self.n_states > 1:
            if not isinstance(state, (tuple, list)) or len(state) != self.n_states:
                raise UserError(f"{name}: state must be a tuple (h, c) of tensors")
            parts = tuple(state)
        elif not torch.is_tensor(state):
            raise UserError(f"{name}: state must be a tensor, got {type(state).__name__}")
        else:
            parts = (state,)
        expected = f"(1, {H})" if unbatched else f"(1, {B}, {H}) or ({B}, {H})"
        out = []
        for s in parts:
            if s.dim() == 3 and s.shape[0] == 1:
                s = s[0]
            if tuple(s.shape) != (B, H):
                shown = tuple(s.shape[:-2] + s.shape[-1:]) if unbatched else tuple(s.shape)
                raise UserError(f"{name}: expected state of shape {expected}, got {shown}")
            out.append(s)
        return tuple(out)

    # -- conversion to and from torch.nn -------------------------------------------------------

    @classmethod
    def from_torch(cls, module):
        """An exact copy of a single-layer, unidirectional torch.nn unit of the same family."""
        _check_torch_module(cls, module)
        unit = cls(module.input_size, module.hidden_size, batch_first=module.batch_first,
                   variant="torch")
        unit = unit.to(device=module.weight_ih_l0.device, dtype=module.weight_ih_l0.dtype)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(unit, name).copy_(getattr(module, name + "_l0"))
        return unit

    def to_torch(self):
        """The equivalent torch.nn module (torch variant only)."""
        if self.variant != "torch":
            raise UserError(f"to_torch needs variant='torch'; the paper's {type(self).__name__} "
                            "has no torch.nn equivalent")
        kwargs = {"nonlinearity": "tanh"} if self.torch_class is nn.RNN else {}
        module = self.torch_class(self.input_size, self.hidden_size, batch_first=self.batch_first,
                                  **kwargs)
        module = module.to(device=self.weight_ih.device, dtype=self.weight_ih.dtype)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(module, name + "_l0").copy_(getattr(self, name))
        return module

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}, variant={self.variant!r}"
        if self.batch_first:
            s += ", batch_first=True"
        if self.weight_noise:
            s += f", weight_noise={self.weight_noise}"
        if self.backend != "fast":
            s += f", backend={self.backend!r}"
        return s


class TanhRNN(RecurrentUnit):
    """The traditional tanh unit: h_t = tanh(W x_t + U h_{t-1} + b) (torch: two biases)."""

    gates = 1
    torch_class = nn.RNN

    def step(self, xw, state, w):
        (h,) = state
        if self.variant == "paper":
            return (torch.tanh(xw + h @ w["weight_hh"].T),)
        return (torch.tanh(xw + F.linear(h, w["weight_hh"], w["bias_hh"])),)


class GRU(RecurrentUnit):
    """Gated recurrent unit. paper: Cho et al. 1406.1078v3, reset gate applied before the
    recurrent product, one bias per block, h_t = (1 - z) h_{t-1} + z h~. torch: nn.GRU, reset
    applied after the product (r * (U_n h + b_hn)), two biases, h_t = (1 - z) n + z h_{t-1}."""

    gates = 3
    torch_class = nn.GRU
    fast_kernels = {"paper": kernels.GRUPaper, "torch": kernels.GRUTorch}

    def step(self, xw, state, w):
        (h,) = state
        x_r, x_z, x_n = xw.chunk(3, 1)                          # (B, H) each
        U_r, U_z, U_n = w["weight_hh"].chunk(3, 0)              # (H, H) each
        if self.variant == "paper":
            r = torch.sigmoid(x_r + h @ U_r.T)
            z = torch.sigmoid(x_z + h @ U_z.T)
            n = torch.tanh(x_n + (r * h) @ U_n.T)
            return ((1 - z) * h + z * n,)
        b_r, b_z, b_n = w["bias_hh"].chunk(3, 0)
        r = torch.sigmoid(x_r + h @ U_r.T + b_r)
        z = torch.sigmoid(x_z + h @ U_z.T + b_z)
        n = torch.tanh(x_n + r * (h @ U_n.T + b_n))
        return ((1 - z) * n + z * h,)


class LSTM(RecurrentUnit):
    """Long short-term memory. paper: Graves (2013) with diagonal peepholes (``peephole`` rows
    V_i, V_f, V_o; the input and forget gates see c_{t-1}, the output gate sees c_t), one bias
    per block. torch: nn.LSTM, no peepholes, two biases. State is (h, c)."""

    gates = 4
    torch_class = nn.LSTM
    n_states = 2
    fast_kernels = {"paper": kernels.LSTM, "torch": kernels.LSTM}

    def _extra_parameters(self):
        if self.variant == "paper":
            self.peephole = nn.Parameter(torch.empty(3, self.hidden_size))  # V_i, V_f, V_o

    def step(self, xw, state, w):
        h, c = state
        gates = xw + h @ w["weight_hh"].T
        if self.variant == "torch":
            gates = gates + w["bias_hh"]
            a_i, a_f, a_g, a_o = gates.chunk(4, 1)
            c = torch.sigmoid(a_f) * c + torch.sigmoid(a_i) * torch.tanh(a_g)
            return torch.sigmoid(a_o) * torch.tanh(c), c
        V_i, V_f, V_o = w["peephole"]
        a_i, a_f, a_g, a_o = gates.chunk(4, 1)
        i = torch.sigmoid(a_i + V_i * c)
        f = torch.sigmoid(a_f + V_f * c)
        c = f * c + i * torch.tanh(a_g)
        o = torch.sigmoid(a_o + V_o * c)
        return o * torch.tanh(c), c


CELLS = {"tanh": TanhRNN, "gru": GRU, "lstm": LSTM}


def reference_scan(step, xw, state, w, mask=None):
    """The readable loop over time. xw (T, B, G*H); state tuple of (B, H); mask (T, B) or None.
    Returns output (T, B, H) and the final state tuple."""
    outputs = []
    for t in range(xw.shape[0]):
        new = step(xw[t], state, w)
        if mask is not None:
            m = mask[t].unsqueeze(1)                             # (B, 1)
            new = tuple(torch.where(m, n, s) for n, s in zip(new, state))
            outputs.append(new[0] * m)
        else:
            outputs.append(new[0])
        state = new
    return torch.stack(outputs), state


def recurrent_params(cell, input_size, hidden_size, variant="paper"):
    """Parameter count of one unit, from the equations (Table 1's derivation)."""
    gates = CELLS[cell].gates
    biases = 1 if variant == "paper" else 2
    n = gates * (input_size * hidden_size + hidden_size * hidden_size + biases * hidden_size)
    if cell == "lstm" and variant == "paper":
        n += 3 * hidden_size
    return n


def _input_bias_name(variant):
    return "bias" if variant == "paper" else "bias_ih"


def _time_mask(lengths, mask, T, B, batch_first, device):
    """A (T, B) boolean mask from lengths (B,) or a user mask, or None when nothing is padded."""
    if lengths is not None and mask is not None:
        raise UserError("give lengths or mask, not both")
    if lengths is not None:
        lengths = torch.as_tensor(lengths, device=device)
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise UserError(f"lengths must be integers, got {lengths.dtype}")
        if lengths.shape != (B,):
            raise UserError(f"lengths must have shape ({B},), got {tuple(lengths.shape)}")
        if B and (int(lengths.min()) < 0 or int(lengths.max()) > T):
            raise UserError(f"lengths must lie in 0..{T}, got {lengths.tolist()}")
        if B and bool((lengths == T).all()):
            return None
        return torch.arange(T, device=device).unsqueeze(1) < lengths.unsqueeze(0)
    if mask is not None:
        mask = torch.as_tensor(mask, device=device).bool()
        if batch_first:
            mask = mask.transpose(0, 1)
        if tuple(mask.shape) != (T, B):
            raise UserError(f"mask must have shape {(B, T) if batch_first else (T, B)}, "
                            f"got {tuple(mask.shape)}")
        return mask
    return None


def _pack_state(parts, n_states):
    return parts[0] if n_states == 1 else parts


def _unsqueeze_state(state, n_states):
    if n_states == 1:
        return state.unsqueeze(-2)
    return tuple(s.unsqueeze(-2) for s in state)


def _check_torch_module(cls, module):
    expected = cls.torch_class
    if type(module) is not expected:
        raise UserError(f"{cls.__name__}.from_torch expects torch.nn.{expected.__name__}, "
                        f"got {type(module).__name__}")
    if module.num_layers != 1 or module.bidirectional or not module.bias:
        raise UserError(f"{cls.__name__}.from_torch supports one unidirectional layer with biases")
    if getattr(module, "proj_size", 0):
        raise UserError("LSTM.from_torch does not support proj_size")
    if getattr(module, "nonlinearity", "tanh") != "tanh":
        raise UserError("TanhRNN.from_torch expects nonlinearity='tanh'")
