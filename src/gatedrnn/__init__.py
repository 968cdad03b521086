"""gatedrnn: the recurrent units of Chung et al. (2014) and the paper's sequence-modeling protocol."""
from .cells import CELLS, GRU, LSTM, TanhRNN
from .errors import UserError
from .model import ModelConfig, SequenceModel

__all__ = ["TanhRNN", "GRU", "LSTM", "CELLS", "ModelConfig", "SequenceModel", "UserError"]
__version__ = "0.1.0"
