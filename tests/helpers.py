"""Shorthands the tests share for building configurations."""
from dataclasses import fields

from gatedrnn.config import ModelConfig, TrainConfig
from gatedrnn.data import MUSIC_TASK
from gatedrnn.model import resolve

MODEL_FIELDS = {f.name for f in fields(ModelConfig)}


def train_config(**kwargs):
    """A TrainConfig from flat keywords: the ModelConfig fields among them go into its model."""
    model = {k: kwargs.pop(k) for k in list(kwargs) if k in MODEL_FIELDS}
    return TrainConfig(model=ModelConfig(**model), **kwargs)


def model_config(task=None, **kwargs):
    """A ModelConfig resolved for ``task`` (default: piano rolls, 88 notes), or, given
    input_size, one with exactly the sizes given (output_size = input_size, a Bernoulli head
    unless said otherwise)."""
    if task is None and "input_size" in kwargs:
        kwargs.setdefault("output_size", kwargs["input_size"])
        kwargs.setdefault("head", "bernoulli")
        return ModelConfig(**kwargs)
    return resolve(ModelConfig(**kwargs), task or MUSIC_TASK)
