"""SequenceModel = a recurrent layer (any unit, any number of layers) + an output head, and the
sizing of units to an equal parameter budget, as in the paper's Table 1."""
from dataclasses import replace

import torch
from torch import nn

from .cells import UNITS, count_parameters, unit_class
from .config import ModelConfig
from .errors import UserError
from .heads import HEADS

# Table 1: units per layer of the paper's three units, for an equal parameter budget.
TABLE1_UNITS = {
    "music": {"lstm": 36, "gru": 46, "tanh": 100},
    "speech": {"lstm": 195, "gru": 227, "tanh": 400},
}
# Table 1 as printed (recurrent layer alone; music inputs were about 100 wide, speech 20).
TABLE1_PRINTED = {
    "music": {"lstm": "~19.8k", "gru": "~20.2k", "tanh": "~20.1k"},
    "speech": {"lstm": "~169.1k", "gru": "~168.9k", "tanh": "~168.4k"},
}
# Table 1's budget (recurrent parameters) for every other unit: about 20k music, 169k speech.
BUDGET = {"music": 20_000, "speech": 169_000}
PAPER_INPUTS = {"music": 100, "speech": 20}     # the input widths Table 1 was counted at


def size_group(kind):
    """Table 1's row group of a task kind: speech, or music for every other kind of data."""
    return "speech" if kind == "speech" else "music"


def hidden_for_params(cls, input_size, budget, variant="paper", num_layers=1):
    """The hidden size whose recurrent parameter count (at ``input_size`` inputs) is closest to
    ``budget`` (the smaller one on a tie). The count grows with the size, so a bisection."""
    def count(h):
        return count_parameters(cls, input_size, h, variant, num_layers)
    lo, hi = 1, 2
    while count(hi) < budget:
        lo, hi = hi, hi * 2
        if hi > 1 << 24:
            raise UserError(f"params {budget:,}: no hidden size of {cls.__name__} reaches it")
    while lo < hi:                                     # the smallest h with count(h) >= budget
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if count(mid) < budget else (lo, mid)
    if lo > 1 and budget - count(lo - 1) <= count(lo) - budget:
        return lo - 1
    return lo


def default_hidden(cell, group, input_size, params=None, variant="paper", num_layers=1):
    """(hidden size, how it was chosen) of a unit with no hidden size given: Table 1's for the
    paper's units (unless ``params`` is given), else the size closest to ``params`` or, without
    it, to Table 1's budget for the task's group (music or speech)."""
    if params is None and cell in TABLE1_UNITS[group]:
        return TABLE1_UNITS[group][cell], "Table 1"
    budget = params or BUDGET[group]
    return (hidden_for_params(unit_class(cell), input_size, budget, variant, num_layers),
            f"budget {budget:,}")


def resolve(config: ModelConfig, task) -> ModelConfig:
    """The model config of a run on ``task`` (data.Task): its input and output sizes, its head,
    and its hidden size (``hidden_size`` if given, else ``default_hidden``). The config keeps
    ``params``, the budget the size was picked for."""
    hidden = config.hidden_size or default_hidden(config.cell, size_group(task.kind),
                                                  task.input_size, config.params,
                                                  config.variant, config.num_layers)[0]
    head = config.head or task.head
    if (head == "categorical") != (task.head == "categorical"):   # tokens (B, T) vs vectors (B, T, D)
        raise UserError(f"head {head} does not fit {task.kind} data: " + (
            "token targets need the categorical head" if task.head == "categorical" else
            f"the categorical head needs token targets (this data's head: {task.head})"))
    return replace(config, hidden_size=hidden, input_size=task.input_size,
                   output_size=task.output_size, head=head)


class SequenceModel(nn.Module):
    """Predicts target_t from inputs_<=t (the data layer shifts inputs so that x_t is predicted
    from x_<t). inputs (B, T, I), targets (B, T, D) (or (B, T) tokens), lengths (B,). The config
    must be resolved (``resolve``): sizes and head filled in."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if None in (config.hidden_size, config.input_size, config.output_size, config.head):
            raise UserError("SequenceModel needs a resolved config (model.resolve): hidden, "
                            "input and output sizes and the head")
        self.config = config
        self.rnn = unit_class(config.cell)(
            config.input_size, config.hidden_size, config.num_layers, batch_first=True,
            dropout=config.dropout, variant=config.variant, weight_noise=config.weight_noise,
            init=config.init, backend=config.backend)
        self.head = HEADS[config.head].from_config(config)

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

    def head_params(self):
        return sum(p.numel() for p in self.head.parameters())

    def num_params(self):
        return sum(p.numel() for p in self.parameters())


def table1_rows(input_size=88):
    """Table 1 with our counts: the recurrent layer alone (at ``input_size`` inputs and at the
    paper's ~100 / 20), and the whole model with its Bernoulli output layer (music)."""
    rows = []
    for task, units in TABLE1_UNITS.items():
        ours_in = input_size if task == "music" else 20
        out = input_size if task == "music" else None
        for cell, hidden in units.items():
            rec = count_parameters(UNITS[cell], ours_in, hidden)
            rows.append({
                "task": task, "cell": cell, "units": hidden,
                "paper": TABLE1_PRINTED[task][cell],
                "recurrent_at_paper_inputs": count_parameters(UNITS[cell], PAPER_INPUTS[task], hidden),
                "inputs": ours_in, "recurrent": rec,
                "model": rec + hidden * out + out if out else None,   # speech heads: see heads.py
            })
    return rows


def unit_rows(input_sizes=(("music", 88), ("speech", 20)), params=None):
    """Every registered unit at its default size (Table 1's, or sized to the budget) or sized to
    ``params``: the hidden size and the recurrent parameter count, per task."""
    rows = []
    for name, cls in UNITS.items():
        for group, width in input_sizes:
            hidden, how = default_hidden(name, group, width, params)
            rows.append({"task": group, "cell": name, "units": hidden, "inputs": width,
                         "recurrent": count_parameters(cls, width, hidden), "sized_by": how,
                         "doc": (cls.__doc__ or "").strip().splitlines()[0]})
    return rows
