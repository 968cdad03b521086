"""SequenceModel = one recurrent layer + an output head, sized as in the paper's Table 1."""
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .cells import CELLS, VARIANTS, recurrent_params
from .kernels import BACKENDS
from .errors import UserError
from .heads import HEADS

# Table 1: units per layer for an equal parameter budget.
TABLE1_UNITS = {
    "music": {"lstm": 36, "gru": 46, "tanh": 100},
    "speech": {"lstm": 195, "gru": 227, "tanh": 400},
}
# Table 1 as printed (recurrent layer alone; music inputs were about 100 wide, speech 20).
TABLE1_PRINTED = {
    "music": {"lstm": "~19.8k", "gru": "~20.2k", "tanh": "~20.1k"},
    "speech": {"lstm": "~169.1k", "gru": "~168.9k", "tanh": "~168.4k"},
}


@dataclass
class ModelConfig:
    cell: str = "gru"               # tanh | gru | lstm
    variant: str = "paper"          # paper | torch (cells.py)
    hidden_size: int = 46           # Table 1: music LSTM 36, GRU 46, tanh 100
    input_size: int = 88            # piano roll: MIDI 21..108
    output_size: int = 88
    head: str = "bernoulli"         # heads.HEADS
    components: int = 20            # mixture components of the "gmm" head (speech)
    weight_noise: float = 0.0       # std on W and U at training forward passes
    backend: str = "fast"           # fast (kernels/, CPU) | reference (cells.reference_scan)

    def __post_init__(self):
        if self.cell not in CELLS:
            raise UserError(f"unknown unit {self.cell!r}; expected one of {', '.join(CELLS)}")
        if self.variant not in VARIANTS:
            raise UserError(f"unknown variant {self.variant!r}; expected one of {', '.join(VARIANTS)}")
        if self.backend not in BACKENDS:
            raise UserError(f"unknown backend {self.backend!r}; expected one of {', '.join(BACKENDS)}")
        if self.head not in HEADS:
            raise UserError(f"unknown head {self.head!r}; expected one of {', '.join(HEADS)}")
        for name in ("hidden_size", "input_size", "output_size", "components"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")

    def to_dict(self):
        return asdict(self)


class SequenceModel(nn.Module):
    """Predicts target_t from inputs_<=t (the data layer shifts inputs so that x_t is predicted
    from x_<t). inputs (B, T, I), targets (B, T, D), lengths (B,)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.rnn = CELLS[config.cell](config.input_size, config.hidden_size, batch_first=True,
                                      variant=config.variant, weight_noise=config.weight_noise,
                                      backend=config.backend)
        head_options = ({"components": config.components} if config.head == "gmm"
                        else {"backend": config.backend})
        self.head = HEADS[config.head](config.hidden_size, config.output_size, **head_options)

    def forward(self, inputs, lengths=None, state=None):
        """Head parameters for every step, and the recurrent state after each sequence."""
        h, state = self.rnn(inputs, state, lengths=lengths)      # (B, T, H)
        return self.head(h), state

    def step_nll(self, inputs, targets, lengths):
        """NLL of every time step (B, T) in nats, zero at padded steps."""
        return self.chunk_nll(inputs, targets, lengths)[0]

    def chunk_nll(self, inputs, targets, lengths, state=None):
        """step_nll from a given state, and the state after each sequence (truncated
        backpropagation through time carries it to the next chunk)."""
        params, state = self(inputs, lengths, state)
        nll = self.head.nll(params, targets)
        T = inputs.shape[1]
        mask = torch.arange(T, device=inputs.device).unsqueeze(0) < lengths.to(inputs.device).unsqueeze(1)
        return nll * mask, state

    def recurrent_params(self):
        return sum(p.numel() for p in self.rnn.parameters())

    def num_params(self):
        return sum(p.numel() for p in self.parameters())


def table1_rows(input_size=88):
    """Table 1 with our counts: the recurrent layer alone (at ``input_size`` inputs and at the
    paper's ~100 / 20), and the whole model with its output layer."""
    rows = []
    for task, units in TABLE1_UNITS.items():
        paper_inputs = 100 if task == "music" else 20
        ours_in = input_size if task == "music" else 20
        out = input_size if task == "music" else None
        for cell, hidden in units.items():
            rec = recurrent_params(cell, ours_in, hidden)
            whole = rec + hidden * out + out if out else None  # speech heads: see heads.py
            rows.append({
                "task": task, "cell": cell, "units": hidden,
                "paper": TABLE1_PRINTED[task][cell],
                "recurrent_at_paper_inputs": recurrent_params(cell, paper_inputs, hidden),
                "inputs": ours_in, "recurrent": rec, "model": whole,
            })
    return rows
