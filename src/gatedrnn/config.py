"""A run's configuration: the model's settings inside the run's training settings, validated here
and nowhere else, written to every run directory (config.json) and rebuilt from it. The command
line is generated from these fields (cli.py): each field is an option, ``--name-with-dashes``, its
type and default from the field, its help from the comment beside it.
"""
import inspect
import io
import math
import re
import tokenize
from dataclasses import asdict, dataclass, field, fields, is_dataclass

from .errors import UserError, describe

OBJECTIVES = ("mean", "released")


@dataclass
class ModelConfig:
    cell: str = "gru"               # the unit: a registered name (gatedrnn params lists them) or
                                    # module:Class for a RecurrentUnit subclass of your own
    variant: str = "paper"          # paper | torch: the paper's equations or torch.nn's (tanh,
                                    # gru and lstm have both)
    hidden_size: int | None = None  # units per layer (default: Table 1's size for tanh, gru and
                                    # lstm; any other unit is sized to --params)
    params: int | None = None       # recurrent parameter budget: the hidden size whose count is
                                    # closest to it (default for other units: Table 1's budget)
    num_layers: int = 1             # stacked recurrent layers (the paper: 1)
    dropout: float = 0.0            # dropout between stacked layers, while training
    head: str | None = None         # output distribution: bernoulli | gmm | categorical | nade
                                    # (default: the data's: bernoulli for piano rolls, gmm for
                                    # speech, categorical for tokens)
    components: int = 20            # gmm head: Gaussians in the mixture
    nade_hidden: int = 150          # nade head: hidden units of the NADE over a step's notes
    weight_noise: float = 0.075     # std of the Gaussian noise added to W and U at every
                                    # training forward pass (the paper: 0.075)
    init: str = "paper"             # paper: W ~ U(-0.1, 0.1), U orthogonal, biases 0 | torch
    backend: str = "fast"           # fast: compiled kernels (or a parallel scan) on the CPU |
                                    # reference: the readable loop of cells.py
    input_size: int | None = field(default=None, metadata={"derived": True})   # from the data
    output_size: int | None = field(default=None, metadata={"derived": True})  # from the data

    def __post_init__(self):
        from .cells import INITS, unit_class
        from .heads import HEADS
        from .kernels import BACKENDS
        unit = unit_class(self.cell)
        _choice("variant", self.variant, unit.variants, f" for unit {self.cell}")
        _choice("backend", self.backend, BACKENDS)
        _choice("init", self.init, INITS)
        if self.head is not None:
            _choice("head", self.head, HEADS)
        if None not in (self.hidden_size, self.params) and self.input_size is None:
            raise UserError("give hidden_size or params, not both")   # resolved configs keep both
        for name in ("hidden_size", "params", "input_size", "output_size"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        for name in ("num_layers", "components", "nade_hidden"):
            _positive_int(name, getattr(self, name))
        _number("weight_noise", self.weight_noise, 0, math.inf)
        _number("dropout", self.dropout, 0, 1, high_open=True)

    def to_dict(self):
        return asdict(self)


@dataclass
class TrainConfig:
    dataset: str = "jsb"            # jsb | nottingham | musedata | pianomidi | fsdd | fsdd-long |
                                    # wav:DIR | midi:DIR | npz:FILE | text:FILE
    data_dir: str | None = None     # directory holding the dataset files (default:
                                    # $GATEDRNN_DATA_DIR, else the download cache)
    model: ModelConfig = field(default_factory=ModelConfig)
    lr: float = 1e-3                # learning rate, decaying linearly to lr * lr_final
    lr_final: float = 0.01          # the learning rate's fraction left at the last epoch
    epochs: int = 500               # at most (the paper's code: 500)
    batch_size: int = 1             # sequences per update, of similar lengths (the paper's code: 1)
    patience: int | None = None     # stop after this many epochs without a better validation NLL
                                    # (default: train every epoch; the best model is kept)
    objective: str = "mean"         # mean: the NLL averaged over a batch's steps, the gradient's
                                    # norm clipped to clip_norm (the paper's text) | released: the
                                    # NLL summed over notes and steps, no clipping, the update's
                                    # norm capped at max_step (the paper's released code)
    clip_norm: float = 1.0          # objective mean: the gradient norm is rescaled to this if larger
    max_step: float = 1.0           # objective released: the joint norm of the parameter steps
                                    # is capped at this (the velocity is not)
    momentum: float = 0.9           # RMSProp of the paper's code: momentum,
    rms_decay: float = 0.95         # averaging coefficient of the squared gradient,
    rms_floor: float = 0.01         # and floor on its root
    tbptt: int | None = None        # truncated backpropagation through time: an update every this
                                    # many steps, the state carried across (default: off)
    eval_batch_size: int = 64       # sequences per batch when computing NLLs
    sample_rate: int = 8000         # speech (wav:DIR): files at other rates are resampled to it
    steps_per_quarter: int = 2      # midi:DIR: piano-roll steps per quarter note (2: eighth notes,
                                    # as Nottingham, MuseData and Piano-midi.de; JSB is 1)
    seed: int = 0                   # initialisation, weight noise and batch order
    deterministic: bool = False     # torch.use_deterministic_algorithms and one thread: the same
                                    # seed gives bit-identical results

    def __post_init__(self):
        from .data import task_of
        if isinstance(self.model, dict):
            self.model = from_dict(ModelConfig, self.model, "model")
        if not isinstance(self.model, ModelConfig):
            raise UserError(f"model must be a ModelConfig, got {type(self.model).__name__}")
        task_of(self.dataset)
        _choice("objective", self.objective, OBJECTIVES)
        for name in ("lr", "clip_norm", "max_step", "rms_floor"):
            _positive(name, getattr(self, name))
        for name in ("epochs", "batch_size", "eval_batch_size", "sample_rate", "steps_per_quarter"):
            _positive_int(name, getattr(self, name))
        for name in ("patience", "tbptt"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        for name in ("momentum", "rms_decay"):
            _number(name, getattr(self, name), 0, 1, high_open=True)
        _number("lr_final", self.lr_final, 0, 1, low_open=True)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise UserError(f"seed must be an integer, got {self.seed!r}")
        from .data.speech import MAX_RATE, MIN_RATE
        if not MIN_RATE <= self.sample_rate <= MAX_RATE:
            raise UserError(f"sample_rate must lie in {MIN_RATE}..{MAX_RATE} Hz, got {self.sample_rate!r}")

    def to_dict(self):
        return asdict(self)


def from_dict(cls, d, source="config"):
    """A config dataclass from a dict (nested dataclasses from nested dicts); every problem is
    one UserError naming ``source``."""
    if not isinstance(d, dict):
        raise UserError(f"{source}: the settings are {type(d).__name__}, expected a JSON object")
    known = {f.name: f for f in fields(cls)}
    unknown = set(d) - set(known)
    if unknown:
        raise UserError(f"{source}: unknown config keys {sorted(unknown)}")
    values = {}
    for name, value in d.items():
        nested = _nested_type(known[name])
        values[name] = from_dict(nested, value, f"{source}: {name}") if nested else value
    try:
        return cls(**values)
    except UserError as e:
        raise UserError(f"{source}: {e}") from None
    except (TypeError, ValueError) as e:           # a value of the wrong type
        raise UserError(f"{source}: bad config value ({describe(e)})") from None


def flatten(d, prefix=""):
    """{"model.cell": ..., "lr": ...} of a nested settings dict."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _nested_type(f):
    """The dataclass type of a field that holds one (TrainConfig.model), else None."""
    factory = f.default_factory
    return factory if isinstance(factory, type) and is_dataclass(factory) else None


def nested_fields(cls):
    """[(path, field)] of every setting, nested ones flattened: ("model", "cell") -> the
    ModelConfig field cell. Fields derived from the data are left out."""
    out = []
    for f in fields(cls):
        nested = _nested_type(f)
        if nested:
            out += [((f.name, *path), g) for path, g in nested_fields(nested)]
        elif not f.metadata.get("derived"):
            out.append(((f.name,), f))
    return out


def field_help(cls):
    """{field name: the comment written beside it, and on the comment-only lines under it} of a
    config dataclass, read from its source: the help of its command-line options."""
    source = inspect.getsource(cls)
    lines = source.splitlines()
    first = next(i for i, line in enumerate(lines) if line.lstrip().startswith("class ")) + 1
    body = len(lines[first]) - len(lines[first].lstrip())      # the class body's indentation
    helps, current = {}, None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        line = lines[tok.start[0] - 1]
        code, text = line[:tok.start[1]], tok.string.lstrip("#").strip()
        match = re.match(r"( *)([A-Za-z_]\w*)\s*:", code)
        if match and len(match.group(1)) == body:             # a field, its comment beside it
            current = match.group(2)
            helps[current] = text
        elif not code.strip() and current is not None:        # the comment goes on
            helps[current] += " " + text
        else:
            current = None
    return helps


def _choice(name, value, choices, where=""):
    if value not in choices:
        raise UserError(f"unknown {name} {value!r}{where}; expected one of {', '.join(choices)}")


def _positive_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"{name} must be a positive integer, got {value!r}")


def _positive(name, value):
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)
            and 0 < value < math.inf):
        raise UserError(f"{name} must be a positive number, got {value!r}")


def _number(name, value, low, high, low_open=False, high_open=False):
    """value in [low, high] (or open at either end), finite unless high is inf."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
          and (value > low if low_open else value >= low)
          and (value < high if high_open else value <= high) and value != math.inf)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open or high == math.inf else ']'}"
        raise UserError(f"{name} must be a number in {interval}, got {value!r}")
