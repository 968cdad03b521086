"""gatedrnn: recurrent units on sequence modeling, after Chung et al. (2014): the paper's tanh, GRU
and LSTM units exactly, any other unit through ``RecurrentUnit``, and the paper's protocol."""
from .cells import CELLS, GRU, LSTM, UNITS, RecurrentUnit, TanhRNN, register
from .config import ModelConfig, TrainConfig
from .errors import UserError
from .model import SequenceModel

__all__ = ["TanhRNN", "GRU", "LSTM", "CELLS", "UNITS", "RecurrentUnit", "register", "ModelConfig",
           "TrainConfig", "SequenceModel", "UserError"]
__version__ = "0.2.0"
