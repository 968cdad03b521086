"""The recurrent units, as torch.nn-shaped modules, and the API to add one.

A unit is a ``RecurrentUnit`` subclass that declares its parameter blocks and writes one
``step`` (its equations, one line per gate). Everything else comes from the base class: argument
checks, padding and lengths, batch_first, PackedSequence, layers, directions and dropout between
layers (torch.nn's constructor arguments, in torch.nn's order), weight noise on the input and
recurrent matrices, the paper's initialisation, the reference loop (``reference_scan``, the
oracle every fast path is tested against) and, where a unit provides one, a fast path: compiled
kernels (kernels/) or a parallel scan over time (kernels/parallel.py). ``register`` puts a unit
in ``UNITS``, the registry that feeds the command line, the tests, the benchmark and ``gatedrnn
params``; ``unit_class`` also accepts ``module:Class`` for a user's own class.

The paper's units (Chung et al. 2014, their section 3), each with two variants:

- ``variant="paper"`` (default), exactly the paper's equations, one bias per gate block:
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
  so ``LSTM(20, 195)`` has 169,065 parameters (Table 1).
- ``variant="torch"``: torch.nn's equations and weight layout: nn.RNN(tanh), nn.GRU with the
  reset gate applied *after* the recurrent product and two bias vectors, nn.LSTM without
  peepholes. ``from_torch`` / ``to_torch`` convert exactly, every layer and direction.

Units after the paper: MUT1, MGU, minGRU, minLSTM, CIFG; see their classes.

Weights are stored like torch.nn, per layer k and direction: ``weight_ih_l{k}`` (G*H, I),
``weight_hh_l{k}`` (G*H, H), ``bias_l{k}`` (paper; torch: ``bias_ih_l{k}``, ``bias_hh_l{k}``),
``_reverse`` for the backward direction; gate blocks stacked along dim 0 in torch's order: GRU
(r, z, n), LSTM (i, f, g, o).
"""
import importlib
import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import kernels
from .errors import UserError, describe
from .kernels import BACKENDS
from .kernels.parallel import recurrence

INITS = ("paper", "torch")
UNITS = {}               # name -> RecurrentUnit subclass


def register(name):
    """Class decorator: ``UNITS[name] = cls`` (``--cell name`` then finds it)."""
    def add(cls):
        cls.unit_name = name
        UNITS[name] = cls
        return cls
    return add


def unit_class(name):
    """The unit named ``name``: a registered name, or ``module:Class`` (importable from the
    current directory or PYTHONPATH) naming a RecurrentUnit subclass."""
    if name in UNITS:
        return UNITS[name]
    if not isinstance(name, str) or ":" not in name:
        raise UserError(f"unknown unit {name!r}; expected one of {', '.join(UNITS)}, or "
                        "module:Class for a RecurrentUnit subclass of your own")
    module, _, attr = name.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except Exception as e:             # noqa: BLE001 - any failure of the user's module
        raise UserError(f"unit {name!r}: cannot import {attr} from {module} ({describe(e)})") from None
    if not (isinstance(cls, type) and issubclass(cls, RecurrentUnit)):
        raise UserError(f"unit {name!r} is not a gatedrnn.RecurrentUnit subclass")
    return cls


class RecurrentUnit(nn.Module):
    """The base of every unit: subclasses declare their parameter blocks and write ``step``.

    What a unit declares (class attributes):
        input_blocks      blocks of H rows in W (``weight_ih``), projected for all steps at once
                          (xw = x W^T + b, with one bias per block unless ``input_bias`` is False)
        recurrent_blocks  blocks of H rows in U (``weight_hh``); 0 for a unit without one
        n_states          1 (h), or 2 (h, c): the output is always the first
        variants          the equation sets it has (only "paper" unless it mirrors torch.nn)
        fast_kernels      {variant: kernels class}: compiled loops of the fast backend, if any
    and, as methods, ``extra_parameters()`` (other per-layer parameters, e.g. peepholes),
    ``step(xw, state, w)`` (one time step: xw (B, input_blocks*H) is x_t W^T + b, state a
    tuple of (B, H), w the layer's weights by name; returns the new state tuple) and, optionally,
    ``parallel_scan(xw, state, w, mask)`` (all steps at once, for the fast backend).

    ``forward(input, hx=None, *, lengths=None, mask=None) -> (output, final_state)`` like
    torch.nn (``hx``: the initial state): input (T, B, I), (B, T, I) with ``batch_first``, (T, I)
    unbatched, or a PackedSequence (returned packed). A state is (L*D, B, H) (L layers, D
    directions; (h, c) for two-state units); (B, H) is accepted for one layer and direction. For
    padded batches give ``lengths`` (B,) or a boolean ``mask`` shaped like the input's first two
    dims: at a padded step the state is carried and the output is zero, so padding changes no
    output, gradient or final state. Bidirectional units need lengths (or a mask that is a prefix
    of each sequence).
    """

    input_blocks = 1
    recurrent_blocks = 1
    n_states = 1
    input_bias = True
    variants = ("paper",)
    fast_kernels = {}
    torch_class = None
    unit_name = None

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, variant="paper", weight_noise=0.0,
                 init="paper", backend="fast", device=None, dtype=None):
        super().__init__()
        name = type(self).__name__
        if variant not in self.variants:
            raise UserError(f"{name}: variant must be one of {', '.join(self.variants)}, got {variant!r}")
        if backend not in BACKENDS:
            raise UserError(f"{name}: backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if init not in INITS:
            raise UserError(f"{name}: init must be one of {', '.join(INITS)}, got {init!r}")
        for arg, value in (("input_size", input_size), ("hidden_size", hidden_size),
                           ("num_layers", num_layers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"{name}: {arg} must be a positive integer, got {value!r}")
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
            raise UserError(f"{name}: dropout must be a number in [0, 1), got {dropout!r}")
        if not isinstance(weight_noise, (int, float)) or not weight_noise >= 0:
            raise UserError(f"{name}: weight_noise must be a number >= 0, got {weight_noise!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bool(bias), batch_first, float(dropout)
        self.bidirectional, self.directions = bool(bidirectional), 2 if bidirectional else 1
        self.variant, self.init, self.backend = variant, init, backend
        self.weight_noise = float(weight_noise)  # std of N(0, s^2) added to W and U per training forward
        factory = {"device": device, "dtype": dtype}
        self.layer_names = []                    # per layer: the names its weights go by in step
        for k in range(num_layers):
            width = input_size if k == 0 else hidden_size * self.directions
            for d in range(self.directions):
                for pname, shape in self.layer_shapes(width).items():
                    full = f"{pname}_l{k}{'_reverse' if d else ''}"
                    if pname.startswith("bias") and not self.bias:     # bias=False: zeros
                        self.register_buffer(full, torch.zeros(shape, **factory), persistent=False)
                    else:
                        self.register_parameter(full, nn.Parameter(torch.empty(shape, **factory)))
                    if k == d == 0:
                        self.layer_names.append(pname)
        self.reset_parameters()

    # -- what a unit declares ------------------------------------------------------------------

    def extra_parameters(self):
        """{name: shape} of a layer's parameters besides W, U and the biases (e.g. peepholes)."""
        return {}

    def step(self, xw, state, w):
        """One time step. xw (B, input_blocks*H): x_t W^T + b. state: tuple of (B, H). w: the
        layer's weights by name (weight_ih, weight_hh, biases, extras). Returns the new state."""
        raise NotImplementedError(f"{type(self).__name__} must define step()")

    parallel_scan = None   # optional: (xw (T, B, G), state, w, mask) -> (output (T, B, H), state)

    def layer_shapes(self, width):
        """{name: shape} of one layer and direction's parameters, reading ``width`` inputs."""
        H, Gi, Gr = self.hidden_size, self.input_blocks * self.hidden_size, self.recurrent_blocks * self.hidden_size
        shapes = {"weight_ih": (Gi, width)}
        if Gr:
            shapes["weight_hh"] = (Gr, H)
        if self.variant == "torch":
            shapes.update(bias_ih=(Gi,), bias_hh=(Gr,))
        elif self.input_bias:
            shapes["bias"] = (Gi,)
        shapes.update(self.extra_parameters())
        return shapes

    def reset_parameters(self):
        """The paper's code: W ~ U(-0.1, 0.1), each H x H block of U orthogonal, biases 0, any
        other parameter (peepholes) U(-0.1, 0.1). ``init="torch"``: torch.nn's
        U(-1/sqrt(H), 1/sqrt(H)) for every parameter. Nothing on the meta device."""
        if any(p.is_meta for p in self.parameters()):
            return
        with torch.no_grad():
            for full, p in self.named_parameters():
                name = full.rsplit("_l", 1)[0]
                if self.init == "torch":
                    k = 1.0 / math.sqrt(self.hidden_size)
                    p.uniform_(-k, k)
                elif name == "weight_hh":
                    for block in p.split(self.hidden_size, 0):
                        nn.init.orthogonal_(block)
                elif name.startswith("bias"):
                    p.zero_()
                else:
                    p.uniform_(-0.1, 0.1)

    # -- one layer and direction -----------------------------------------------------------------

    def weights(self, layer=0, direction=0):
        """The weights of one layer and direction by name, as used by one forward pass: with
        weight noise on W and U when training."""
        suffix = f"_l{layer}{'_reverse' if direction else ''}"
        w = {name: getattr(self, name + suffix) for name in self.layer_names}
        if self.training and self.weight_noise > 0:
            for name in ("weight_ih", "weight_hh"):
                if name in w:
                    w[name] = w[name] + self.weight_noise * torch.randn_like(w[name])
        return w

    def input_bias_name(self):
        return "bias_ih" if self.variant == "torch" else "bias" if self.input_bias else None

    def one_step(self, x, state=None):
        """One time step of every layer from the unit's own ``step`` equations, for loops that
        feed each output back (sampling, gradient flow): x (B, I); ``state`` as forward takes
        and returns it ((L, B, H), or (h, c) of them; None: zeros). Returns (h (B, H) of the top
        layer, the new state). The numbers of forward(x[:, None], state) on the reference
        backend (unidirectional units; in eval mode unless weight noise is wanted), without its
        per-call checks: 2 to 4 times faster than a length-1 call of the fast kernels."""
        if self.bidirectional:
            raise UserError(f"{type(self).__name__}: one_step needs a unidirectional unit")
        B, H, L = x.shape[0], self.hidden_size, self.num_layers
        parts = ((x.new_zeros(L, B, H),) * self.n_states if state is None
                 else state if isinstance(state, tuple) else (state,))
        new = []
        for k in range(L):
            w = self.weights(k)
            layer = self.step(F.linear(x, w["weight_ih"], w.get(self.input_bias_name())),
                              tuple(s[k] for s in parts), w)
            new.append(layer)
            x = layer[0]                                         # (B, H): the next layer's input
        stacked = tuple(torch.stack([layer[i] for layer in new]) for i in range(self.n_states))
        return x, _pack_state(stacked, self.n_states)

    def backend_for(self, *tensors):
        """The backend that runs such tensors: "fast" where this unit has a fast path for them
        (its compiled kernels: CPU float32 / float64; a parallel scan: anything), else
        "reference", with one warning saying why when "fast" was asked for."""
        if self.backend != "fast":
            return "reference"
        if self.fast_kernels.get(self.variant) is not None:
            reason = kernels.unsupported(*tensors)
        elif self.parallel_scan is not None:
            reason = None
        else:
            reason = f"{type(self).__name__} has no fast path; it runs the reference loop"
        if reason is None:
            return "fast"
        kernels.warn_once(reason)
        return "reference"

    def scan_layer(self, x, state, w, mask, in_bf=False, out_bf=False):
        """One layer and direction over all steps: x (T, B, I), or (B, T, I) with in_bf; state
        tuple of (B, H); mask (T, B) or None. Output (T, B, H), or (B, T, H) with out_bf."""
        bias = w.get(self.input_bias_name())
        fast = self.backend_for(x, w["weight_ih"], *state) == "fast"
        kernel = self.fast_kernels.get(self.variant)
        if fast and kernel is not None:     # a piano roll is projected inside the kernels
            xw = kernels.project(x, w["weight_ih"], bias, mask, in_bf, fused=True)
            return kernels.scan(kernel, partial(reference_scan, self.step), xw, w, state, mask,
                                out_bf)
        xw = kernels.dense_project(x, w["weight_ih"], bias, mask, in_bf)     # (T, B, G)
        if fast:
            output, state = self.parallel_scan(xw, state, w, mask)
        else:
            output, state = reference_scan(self.step, xw, state, w, mask)
        return (output.transpose(0, 1) if out_bf else output), state

    # -- torch.nn-shaped forward -----------------------------------------------------------------

    def forward(self, input, hx=None, *, lengths=None, mask=None):
        if isinstance(input, PackedSequence):
            if lengths is not None or mask is not None:
                raise UserError(f"{type(self).__name__}: a PackedSequence carries its lengths; "
                                "give no lengths or mask")
            return self._forward_packed(input, hx)
        return self._forward(input, hx, lengths, mask)

    def flatten_parameters(self):
        """Nothing to do: torch.nn's cuDNN weight compaction, kept so that code calling it
        runs unchanged (our weights are used where they are)."""

    def _forward(self, input, state, lengths, mask, packing=None):
        """forward on a padded or unbatched input. ``packing``: for a PackedSequence input, its
        sorted order and sorted lengths, over whose packed data dropout draws its masks."""
        unbatched = input.dim() == 2
        if not unbatched and input.dim() != 3:
            raise UserError(f"{type(self).__name__}: input must be 3-D (T, B, I) or 2-D (T, I), "
                            f"got shape {tuple(input.shape)}")
        bf = self.batch_first and not unbatched
        x = input.unsqueeze(1) if unbatched else input
        T, B = (x.shape[1], x.shape[0]) if bf else x.shape[:2]
        if x.shape[2] != self.input_size:
            raise UserError(f"{type(self).__name__}: expected input size {self.input_size}, "
                            f"got {x.shape[2]}")
        if T == 0:
            raise UserError(f"{type(self).__name__}: input has no time steps")
        states = self._initial_state(state, B, x, unbatched)
        mask = _time_mask(lengths, mask, T, B, bf, x.device)
        reverse = _reverse_index(mask, T, B, x.device) if self.bidirectional else None
        finals = []
        for k in range(self.num_layers):
            in_bf, out_bf = bf and k == 0, bf and k == self.num_layers - 1
            outs = []
            for d in range(self.directions):
                xd = x if d == 0 else _reversed(x, reverse, in_bf)
                out, final = self.scan_layer(xd, states[k * self.directions + d],
                                             self.weights(k, d), mask, in_bf, out_bf)
                outs.append(out if d == 0 else _reversed(out, reverse, out_bf))
                finals.append(final)
            x = outs[0] if len(outs) == 1 else torch.cat(outs, -1)
            if self.dropout and self.training and k < self.num_layers - 1:
                x = _dropout(x, self.dropout, packing)
        final = tuple(torch.stack([f[i] for f in finals]) for i in range(self.n_states))
        if unbatched:
            return x.squeeze(1), _pack_state(tuple(s.squeeze(1) for s in final), self.n_states)
        return x, _pack_state(final, self.n_states)

    def _forward_packed(self, packed, state):
        """torch.nn's contract for a PackedSequence: the output packed like the input, the
        state in the batch's original order."""
        padded, lengths = pad_packed_sequence(packed, batch_first=self.batch_first)
        order = (packed.sorted_indices if packed.sorted_indices is not None
                 else torch.arange(len(lengths), device=lengths.device)).to(padded.device)
        output, final = self._forward(padded, state, lengths, None, (order, lengths[order.cpu()]))
        dim = 0 if self.batch_first else 1
        data = pack_padded_sequence(output.index_select(dim, order), lengths[order.cpu()],
                                    batch_first=self.batch_first).data
        return PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                              packed.unsorted_indices), final

    def _initial_state(self, state, B, x, unbatched):
        """Per layer and direction, a tuple of (B, H) tensors."""
        H, LD, name = self.hidden_size, self.num_layers * self.directions, type(self).__name__
        if state is None:
            zeros = x.new_zeros(LD, B, H)
            return [tuple(zeros[i] for _ in range(self.n_states)) for i in range(LD)]
        if self.n_states > 1:
            if not isinstance(state, (tuple, list)) or len(state) != self.n_states:
                raise UserError(f"{name}: state must be a tuple of {self.n_states} tensors (h, c)")
            parts = tuple(state)
        elif not torch.is_tensor(state):
            raise UserError(f"{name}: state must be a tensor, got {type(state).__name__}")
        else:
            parts = (state,)
        expected = f"({LD}, {H})" if unbatched else f"({LD}, {B}, {H})" + (
            f" or ({B}, {H})" if LD == 1 else "")
        out = []
        for s in parts:
            if unbatched:
                s = s.unsqueeze(-2)
            elif s.dim() == 2 and LD == 1:
                s = s.unsqueeze(0)
            if tuple(s.shape) != (LD, B, H):
                shown = tuple(s.shape[:-2] + s.shape[-1:]) if unbatched else tuple(s.shape)
                raise UserError(f"{name}: expected state of shape {expected}, got {shown}")
            out.append(s)
        return [tuple(s[i] for s in out) for i in range(LD)]

    # -- conversion to and from torch.nn -------------------------------------------------------

    @classmethod
    def from_torch(cls, module):
        """An exact copy of a torch.nn unit of the same family (every layer and direction), as
        variant "torch", in the module's mode (training or eval). Draws no random numbers."""
        if cls.torch_class is None or type(module) is not cls.torch_class:
            expected = cls.torch_class.__name__ if cls.torch_class else "nothing: it has no torch.nn twin"
            raise UserError(f"{cls.__name__}.from_torch expects torch.nn.{expected}, "
                            f"got {type(module).__name__}")
        if getattr(module, "proj_size", 0):
            raise UserError("LSTM.from_torch does not support proj_size")
        if getattr(module, "nonlinearity", "tanh") != "tanh":
            raise UserError("TanhRNN.from_torch expects nonlinearity='tanh'")
        first = module.weight_ih_l0
        unit = cls(module.input_size, module.hidden_size, num_layers=module.num_layers,
                   bias=module.bias, batch_first=module.batch_first, dropout=module.dropout,
                   bidirectional=module.bidirectional, variant="torch", device="meta",
                   dtype=first.dtype).to_empty(device=first.device)
        unit.load_state_dict(module.state_dict())
        for zeros in unit.buffers():          # bias=False: the biases are zero buffers
            zeros.zero_()
        return unit.train(module.training)

    def to_torch(self):
        """The equivalent torch.nn module (variant "torch" only), in this unit's mode (training
        or eval). Draws no random numbers."""
        if self.variant != "torch" or self.torch_class is None:
            raise UserError(f"to_torch needs variant='torch'; the {self.variant} "
                            f"{type(self).__name__} has no torch.nn equivalent")
        kwargs = {"nonlinearity": "tanh"} if self.torch_class is nn.RNN else {}
        first = self.weight_ih_l0
        module = self.torch_class(self.input_size, self.hidden_size, num_layers=self.num_layers,
                                  bias=self.bias, batch_first=self.batch_first,
                                  dropout=self.dropout, bidirectional=self.bidirectional,
                                  device="meta", dtype=first.dtype, **kwargs)
        module = module.to_empty(device=first.device)
        module.load_state_dict(self.state_dict())
        return module.train(self.training)

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for attr, default in (("bias", True), ("batch_first", False), ("dropout", 0.0),
                              ("bidirectional", False), ("variant", "paper"),
                              ("weight_noise", 0.0), ("backend", "fast")):
            if getattr(self, attr) != default:
                s += f", {attr}={getattr(self, attr)!r}"
        return s


# -- the paper's units ---------------------------------------------------------------------------

@register("tanh")
class TanhRNN(RecurrentUnit):
    """The traditional tanh unit: h_t = tanh(W x_t + U h_{t-1} + b) (torch: two biases)."""

    variants = ("paper", "torch")
    torch_class = nn.RNN
    fast_kernels = {"paper": kernels.Tanh, "torch": kernels.Tanh}

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, **kwargs):
        """nn.RNN's arguments in nn.RNN's order (its fourth is the nonlinearity: tanh only)."""
        if nonlinearity != "tanh":
            raise UserError(f"TanhRNN: nonlinearity must be 'tanh', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, **kwargs)

    def step(self, xw, state, w):
        (h,) = state
        if self.variant == "paper":
            return (torch.tanh(xw + h @ w["weight_hh"].T),)
        return (torch.tanh(xw + F.linear(h, w["weight_hh"], w["bias_hh"])),)


@register("gru")
class GRU(RecurrentUnit):
    """Gated recurrent unit. paper: Cho et al. 1406.1078v3, reset gate applied before the
    recurrent product, one bias per block, h_t = (1 - z) h_{t-1} + z h~. torch: nn.GRU, reset
    applied after the product (r * (U_n h + b_hn)), two biases, h_t = (1 - z) n + z h_{t-1}."""

    input_blocks = recurrent_blocks = 3
    variants = ("paper", "torch")
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


@register("lstm")
class LSTM(RecurrentUnit):
    """Long short-term memory. paper: Graves (2013) with diagonal peepholes (``peephole`` rows
    V_i, V_f, V_o; the input and forget gates see c_{t-1}, the output gate sees c_t), one bias
    per block. torch: nn.LSTM, no peepholes, two biases. State is (h, c)."""

    input_blocks = recurrent_blocks = 4
    n_states = 2
    variants = ("paper", "torch")
    torch_class = nn.LSTM
    fast_kernels = {"paper": kernels.LSTM, "torch": kernels.LSTM}

    def extra_parameters(self):
        return {"peephole": (3, self.hidden_size)} if self.variant == "paper" else {}  # V_i, V_f, V_o

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


# -- units after the paper --------------------------------------------------------------------------

@register("mut1")
class MUT1(RecurrentUnit):
    """MUT1, the best architecture found by Jozefowicz, Zaremba and Sutskever (2015), *An
    Empirical Exploration of Recurrent Network Architectures*:

        z = sigmoid(W_xz x_t + b_z)
        r = sigmoid(W_xr x_t + W_hr h_{t-1} + b_r)
        h_t = tanh(W_hh (r * h_{t-1}) + tanh(x_t) + b_h) * z + h_{t-1} * (1 - z)

    Their tanh(x_t) adds the input itself, which needs as many inputs as units; here x_t is
    first projected to the H units, tanh(W_x x_t), with no bias inside (the one bias b_h stays
    outside, as published). W holds (W_xz, W_xr, W_x), U holds (W_hr, W_hh)."""

    input_blocks, recurrent_blocks = 3, 2
    input_bias = False                          # b_z, b_r, b_h are applied in step, as published
    fast_kernels = {"paper": kernels.MUT1}

    def extra_parameters(self):
        return {"bias": (3 * self.hidden_size,)}

    def step(self, xw, state, w):
        (h,) = state
        x_z, x_r, x_h = xw.chunk(3, 1)
        U_r, U_h = w["weight_hh"].chunk(2, 0)
        b_z, b_r, b_h = w["bias"].chunk(3, 0)
        z = torch.sigmoid(x_z + b_z)
        r = torch.sigmoid(x_r + h @ U_r.T + b_r)
        return (torch.tanh((r * h) @ U_h.T + torch.tanh(x_h) + b_h) * z + h * (1 - z),)


@register("mgu")
class MGU(RecurrentUnit):
    """The minimal gated unit of Zhou, Wu, Zhang and Zhou (2016), *Minimal Gated Unit for
    Recurrent Neural Networks*: one forget gate in place of the GRU's two,

        f = sigmoid(W_f x_t + U_f h_{t-1} + b_f)
        h~ = tanh(W_h x_t + U_h (f * h_{t-1}) + b_h)
        h_t = (1 - f) * h_{t-1} + f * h~"""

    input_blocks = recurrent_blocks = 2
    fast_kernels = {"paper": kernels.MGU}

    def step(self, xw, state, w):
        (h,) = state
        x_f, x_h = xw.chunk(2, 1)
        U_f, U_h = w["weight_hh"].chunk(2, 0)
        f = torch.sigmoid(x_f + h @ U_f.T)
        n = torch.tanh(x_h + (f * h) @ U_h.T)
        return ((1 - f) * h + f * n,)


@register("cifg")
class CIFG(RecurrentUnit):
    """LSTM with coupled input and forget gates, Greff, Srivastava, Koutnik, Steunebrink and
    Schmidhuber (2017), *LSTM: A Search Space Odyssey* (the variant that study found as good as
    the full LSTM): the paper's LSTM with f_t = 1 - i_t, so no forget-gate parameters; the input
    and output gates keep their peepholes (V_i sees c_{t-1}, V_o sees c_t):

        i_t = sigmoid(W_i x_t + U_i h_{t-1} + V_i * c_{t-1} + b_i)
        c_t = (1 - i_t) * c_{t-1} + i_t * tanh(W_c x_t + U_c h_{t-1} + b_c)
        o_t = sigmoid(W_o x_t + U_o h_{t-1} + V_o * c_t + b_o)
        h_t = o_t * tanh(c_t)

    Gate blocks (i, g, o); ``peephole`` rows (V_i, V_o). State is (h, c)."""

    input_blocks = recurrent_blocks = 3
    n_states = 2
    fast_kernels = {"paper": kernels.CIFG}

    def extra_parameters(self):
        return {"peephole": (2, self.hidden_size)}

    def step(self, xw, state, w):
        h, c = state
        a_i, a_g, a_o = (xw + h @ w["weight_hh"].T).chunk(3, 1)
        V_i, V_o = w["peephole"]
        i = torch.sigmoid(a_i + V_i * c)
        c = (1 - i) * c + i * torch.tanh(a_g)
        o = torch.sigmoid(a_o + V_o * c)
        return o * torch.tanh(c), c


def positive(v):
    """g(v) = v + 0.5 for v >= 0, sigmoid(v) otherwise: Feng et al.'s activation that keeps the
    candidate state positive (their log-space minGRU / minLSTM need it)."""
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


def log_positive(v):
    """log g(v), computed in log space (no underflow for very negative v)."""
    return torch.where(v >= 0, torch.log(F.relu(v) + 0.5), -F.softplus(-v))


@register("mingru")
class MinGRU(RecurrentUnit):
    """minGRU of Feng, Tung, Ahmed, Bengio and Hajimirsadeghi (2024), *Were RNNs All We
    Needed?*, in their log-space form: no gate reads h_{t-1},

        z = sigmoid(W_z x_t + b_z)
        h~ = g(W_h x_t + b_h),   g(v) = v + 0.5 (v >= 0), sigmoid(v) (v < 0)
        h_t = (1 - z) * h_{t-1} + z * h~

    so the fast backend computes the gates of all steps at once, then the recurrence h_t = a_t
    h_{t-1} + b_t (kernels/parallel.py: one compiled pass on the CPU, the paper's parallel scan
    in log space elsewhere or with ``scan_method = "log"``); the step is the reference loop. No
    recurrent matrix: weight noise falls on W alone, and an equal parameter budget buys many
    more units."""

    input_blocks, recurrent_blocks = 2, 0
    scan_method = "auto"         # kernels.parallel.recurrence: auto | log | linear

    def step(self, xw, state, w):
        (h,) = state
        x_z, x_h = xw.chunk(2, 1)
        z = torch.sigmoid(x_z)
        return ((1 - z) * h + z * positive(x_h),)

    def parallel_scan(self, xw, state, w, mask):
        x_z, x_h = xw.chunk(2, 2)
        log_a, log_b = -F.softplus(x_z), -F.softplus(-x_z) + log_positive(x_h)  # log(1-z), log(z h~)
        return _scan_output(recurrence(log_a, log_b, state[0], mask, self.scan_method), mask)


@register("minlstm")
class MinLSTM(RecurrentUnit):
    """minLSTM of Feng et al. (2024), in their log-space form: no gate reads h_{t-1},

        f = sigmoid(W_f x_t + b_f);  i = sigmoid(W_i x_t + b_i)
        f' = f / (f + i);  i' = i / (f + i)
        h~ = g(W_h x_t + b_h)   (g as in MinGRU)
        h_t = f' * h_{t-1} + i' * h~

    its recurrence run as MinGRU's on the fast backend (kernels/parallel.py)."""

    input_blocks, recurrent_blocks = 3, 0
    scan_method = "auto"         # kernels.parallel.recurrence: auto | log | linear

    def step(self, xw, state, w):
        (h,) = state
        x_f, x_i, x_h = xw.chunk(3, 1)
        f, i = torch.sigmoid(x_f), torch.sigmoid(x_i)
        return (f / (f + i) * h + i / (f + i) * positive(x_h),)

    def parallel_scan(self, xw, state, w, mask):
        x_f, x_i, x_h = xw.chunk(3, 2)
        diff = F.softplus(-x_f) - F.softplus(-x_i)          # log i - log f
        log_a, log_b = -F.softplus(diff), -F.softplus(-diff) + log_positive(x_h)
        return _scan_output(recurrence(log_a, log_b, state[0], mask, self.scan_method), mask)


def _scan_output(h, mask):
    """(output, final state) of a parallel scan's states h (T, B, H): zero output at padded
    steps, and the state after each sequence's last step (carried through its padding)."""
    return (h if mask is None else h * mask.unsqueeze(-1)), (h[-1],)


PAPER_UNITS = ("tanh", "gru", "lstm")
CELLS = {name: UNITS[name] for name in PAPER_UNITS}      # the paper's three, by name


# -- the reference loop and its helpers ------------------------------------------------------------

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


def count_parameters(cls, input_size, hidden_size, variant="paper", num_layers=1,
                     bidirectional=False):
    """Parameters of a unit, counted from its declared shapes (built on the meta device: no
    memory, no random numbers)."""
    unit = cls(input_size, hidden_size, num_layers, bidirectional=bidirectional, variant=variant,
               device="meta")
    return sum(p.numel() for p in unit.parameters())


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


def _reverse_index(mask, T, B, device):
    """(T, B) time indices that reverse each sequence within its length (padding stays where
    it is), for the backward direction; the mask must be a prefix of each sequence."""
    t = torch.arange(T, device=device).unsqueeze(1)                  # (T, 1)
    if mask is None:
        return (T - 1 - t).expand(T, B)
    lengths = mask.sum(0)
    if not torch.equal(mask, t < lengths):
        raise UserError("a bidirectional unit needs lengths (or a mask that is a prefix of each "
                        "sequence): its backward direction starts at each sequence's end")
    return torch.where(t < lengths, lengths - 1 - t, t)


def _reversed(x, index, batch_first):
    """x (T, B, F), or (B, T, F) with batch_first, with each sequence reversed along time."""
    if batch_first:
        return x.gather(1, index.T.unsqueeze(-1).expand_as(x))
    return x.gather(0, index.unsqueeze(-1).expand_as(x))


def _dropout(x, p, packing):
    """Dropout of a layer's output x (T, B, F) on its way to the next layer. For a
    PackedSequence input (``packing``: the batch's sorted order and sorted lengths) the mask is
    drawn over the packed data, as torch.nn draws it: the same seed drops the same entries."""
    if packing is None:
        return F.dropout(x, p, training=True)
    order, lengths = packing
    packed = pack_padded_sequence(x.index_select(1, order), lengths)
    dropped = PackedSequence(F.dropout(packed.data, p, training=True), packed.batch_sizes)
    return pad_packed_sequence(dropped, total_length=x.shape[0])[0].index_select(
        1, torch.argsort(order))


def _pack_state(parts, n_states):
    return parts[0] if n_states == 1 else parts
