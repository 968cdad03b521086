"""One configuration, one command line made from it: every setting is an option with its type,
default and help; a config.json written by train rebuilds the same run; the configuration is
validated in one place, with one-line errors."""
import json
import typing
from dataclasses import MISSING, fields

import pytest

from gatedrnn import __version__
from gatedrnn.cli import build_parser, config_from_args, main
from gatedrnn.config import (ModelConfig, TrainConfig, field_help, flatten, from_dict,
                             nested_fields)
from gatedrnn.errors import UserError
from gatedrnn.train import read_run, train

from helpers import train_config


def settings():
    return [path for path, _ in nested_fields(TrainConfig)]


def option(name):
    return "--" + name.replace("_", "-")


@pytest.mark.parametrize("command", ["train", "compare", "reproduce"])
def test_every_setting_is_an_option_with_the_fields_help(command):
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]      # argparse has no public way
    actions = {a.dest: a for a in sub._actions}
    own = {"compare": {"cell"}, "reproduce": {"dataset", "cell", "variant", "lr"}}.get(command, set())
    helps = {**field_help(TrainConfig), **field_help(ModelConfig)}
    for path in settings():
        name = path[-1]
        if name in own:
            assert name not in actions                            # the command sets it itself
            continue
        assert name in actions and option(name) in actions[name].option_strings, name
        assert helps[name] and helps[name].split()[0] in actions[name].help, name


def test_field_names_are_unique_across_the_nested_configs():
    names = [path[-1] for path in settings()]
    assert len(names) == len(set(names))


def test_derived_fields_are_not_options():
    derived = {f.name for f in fields(ModelConfig) if f.metadata.get("derived")}
    assert derived == {"input_size", "output_size"}
    assert not derived & {path[-1] for path in settings()}


def test_every_field_has_its_comment_as_help():
    for cls in (TrainConfig, ModelConfig):
        helps = field_help(cls)
        for f in fields(cls):
            if f.name != "model" and not f.metadata.get("derived"):
                assert len(helps.get(f.name, "")) > 10, f"{cls.__name__}.{f.name} has no comment"


def test_the_defaults_of_the_command_line_are_the_configs():
    args = build_parser().parse_args(["train", "--run-dir", "x"])
    assert config_from_args(args) == TrainConfig()


def test_options_of_every_type_reach_the_config():
    args = build_parser().parse_args([
        "train", "--run-dir", "x", "--cell", "mgu", "--params", "9000", "--num-layers", "2",
        "--dropout", "0.1", "--lr", "0.02", "--patience", "none", "--tbptt", "50",
        "--objective", "released", "--max-step", "0.5", "--momentum", "0.8", "--deterministic",
        "--head", "nade", "--nade-hidden", "20"])
    config = config_from_args(args)
    assert (config.model.cell, config.model.params, config.model.num_layers) == ("mgu", 9000, 2)
    assert (config.model.dropout, config.model.head, config.model.nade_hidden) == (0.1, "nade", 20)
    assert (config.lr, config.patience, config.tbptt) == (0.02, None, 50)
    assert (config.objective, config.max_step, config.momentum) == ("released", 0.5, 0.8)
    assert config.deterministic is True


def test_a_config_written_by_train_rebuilds_the_same_run(tmp_path):
    """config.json holds every setting (the model's sizes resolved); the TrainConfig rebuilt from
    it trains the same run again: equal curves and metrics."""
    import numpy as np
    from gatedrnn.data.batching import music_examples
    rng = np.random.default_rng(0)
    examples = {s: music_examples([(rng.random((6, 88)) < 0.1).astype(np.uint8)
                                   for _ in range(8)]) for s in ("train", "valid", "test")}
    config = train_config(cell="lstm", hidden_size=5, epochs=2, batch_size=4, seed=2,
                          deterministic=True)
    first = train(config, tmp_path / "a", examples, log=lambda s: None)
    record = json.loads((tmp_path / "a" / "config.json").read_text())
    assert record["gatedrnn"] == __version__ and "commit" in record
    assert set(flatten(record["config"])) == {".".join(p) for p in settings()} | {
        "model.input_size", "model.output_size"}
    rebuilt, _ = read_run(tmp_path / "a")
    assert rebuilt.model.hidden_size == 5 and rebuilt.model.input_size == 88
    again = train(rebuilt, tmp_path / "b", examples, log=lambda s: None)
    assert {k: v for k, v in again.items() if k != "seconds"} == \
        {k: v for k, v in first.items() if k != "seconds"}
    assert (tmp_path / "a" / "curves.csv").read_text().count("\n") == 3


@pytest.mark.parametrize("change, message", [
    ({"lr": 0}, "lr must be a positive number, got 0"),
    ({"objective": "sum"}, "unknown objective 'sum'; expected one of mean, released"),
    ({"model": {"cell": "mgu", "variant": "torch"}},
     "model: unknown variant 'torch' for unit mgu; expected one of paper"),
    ({"model": {"hidden_size": 8, "params": 900}}, "model: give hidden_size or params, not both"),
    ({"model": {"dropout": 1.0}}, "model: dropout must be a number in [0, 1), got 1.0"),
    ({"epochs": 2.5}, "epochs must be a positive integer, got 2.5"),
])
def test_the_configuration_is_validated_in_one_place(change, message):
    with pytest.raises(UserError) as e:
        from_dict(TrainConfig, change, "settings")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_version_is_printed(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"gatedrnn {__version__}"


def test_types_of_the_fields_are_ones_the_command_line_parses():
    for path, f in nested_fields(TrainConfig):
        args = typing.get_args(f.type)
        kind = next((a for a in args if a is not type(None)), f.type) if args else f.type
        assert kind in (int, float, str, bool), path
        assert f.default is not MISSING or f.default_factory is not MISSING
