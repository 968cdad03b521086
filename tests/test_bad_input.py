"""Every kind of bad input through the real entry point (cli.main): one line on stderr, exit
status 2, no traceback. Hostile pickles run nothing. Files are generated here, tiny."""
import json
import os
import pickle
import re
import shlex
import shutil
import struct
import wave
import zlib

import numpy as np
import pytest

from gatedrnn.cli import main
from helpers import train_config

TRAIN = ["train", "--dataset", "jsb", "--cell", "gru", "--hidden-size", "3", "--epochs", "1",
         "--batch-size", "64"]


def one_line_error(args, capsys, status=2):
    """Run the CLI in-process; assert the status and a single 'gatedrnn: error:' line; return it."""
    try:
        got = main([str(a) for a in args])
    except SystemExit as e:                               # argparse exits itself
        got = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert got == status, err
    assert len(lines) == 1 and re.match(r"gatedrnn( train)?: error: ", lines[0]), err
    return lines[0]


def good_splits():
    return {"train": [[[60], []]] * 229, "valid": [[[61]]] * 76, "test": [[[62]]] * 77}


def pickle_dir(tmp_path, obj=None, data=None):
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    (folder / "JSB Chorales.pickle").write_bytes(data if data is not None else
                                                 pickle.dumps(obj, protocol=2))
    return folder


def mat_dir(tmp_path, data):
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    (folder / "JSB_Chorales.mat").write_bytes(data)
    return folder


def mat_header():
    return b"MATLAB 5.0 MAT-file".ljust(116, b" ") + b"\0" * 8 + b"\x00\x01IM"


def zlib_bomb(declared):
    """A compressed element whose matrix tag declares ``declared`` bytes (zeros follow)."""
    body = zlib.compress(struct.pack("<II", 14, declared) + b"\0" * 100_000)
    return mat_header() + struct.pack("<II", 15, len(body)) + body


def wav_bytes(channels=1, width=2, rate=8000, frames=400, fmt=1):
    data = np.zeros(frames * channels * width, np.uint8).tobytes()
    fmt_chunk = struct.pack("<HHIIHH", fmt, channels, rate, rate * channels * width,
                            channels * width, 8 * width)
    return (b"RIFF" + struct.pack("<I", 4 + 8 + 16 + 8 + len(data)) + b"WAVE" + b"fmt " +
            struct.pack("<I", 16) + fmt_chunk + b"data" + struct.pack("<I", len(data)) + data)


def wav_dir(tmp_path, bad):
    folder = tmp_path / "wavs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        with wave.open(str(folder / f"{i}.wav"), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
            w.writeframes(rng.integers(-1000, 1000, 400).astype("<i2").tobytes())
    (folder / "3.wav").write_bytes(bad)
    return folder


# (name, function of tmp_path -> CLI args, expected part of the one-line message)
CASES = [
    ("lr -1", lambda t: [*TRAIN, "--lr", "-1", "--run-dir", t / "r"], "lr must be a positive number, got -1.0"),
    ("lr nan", lambda t: [*TRAIN, "--lr", "nan", "--run-dir", t / "r"], "lr must be a positive number, got nan"),
    ("lr inf", lambda t: [*TRAIN, "--lr", "inf", "--run-dir", t / "r"], "lr must be a positive number, got inf"),
    ("lr abc", lambda t: [*TRAIN, "--lr", "abc", "--run-dir", t / "r"], "argument --lr: invalid float value: 'abc'"),
    ("epochs 0", lambda t: [*TRAIN, "--epochs", "0", "--run-dir", t / "r"], "epochs must be a positive integer, got 0"),
    ("hidden 0", lambda t: [*TRAIN, "--hidden-size", "0", "--run-dir", t / "r"],
     "hidden_size must be a positive integer, got 0"),
    ("hidden 1e7", lambda t: [*TRAIN, "--hidden-size", "1e7", "--run-dir", t / "r"],
     "argument --hidden-size: invalid int value: '1e7'"),
    ("hidden 10000000", lambda t: [*TRAIN, "--hidden-size", "10000000", "--data-dir",
                                   pickle_dir(t, good_splits()), "--run-dir", t / "r"],
     "hidden_size 10000000: the model needs 300,002,670,000,000 parameters"),
    ("batch size -3", lambda t: [*TRAIN, "--batch-size", "-3", "--run-dir", t / "r"],
     "batch_size must be a positive integer, got -3"),
    ("weight noise nan", lambda t: [*TRAIN, "--weight-noise", "nan", "--run-dir", t / "r"],
     "weight_noise must be a number in [0, inf), got nan"),
    ("data dir missing", lambda t: [*TRAIN, "--data-dir", t / "nowhere", "--run-dir", t / "r"],
     "nowhere is not a directory"),
    ("data dir is a file", lambda t: [*TRAIN, "--data-dir", pickle_dir(t, good_splits()) / "JSB Chorales.pickle",
                                      "--run-dir", t / "r"], "JSB Chorales.pickle is not a directory"),
    ("data dir without the file", lambda t: [*TRAIN, "--data-dir", t, "--run-dir", t / "r"],
     "holds neither JSB_Chorales.mat nor JSB Chorales.pickle"),
    ("run dir is a file", lambda t: [*TRAIN, "--run-dir", pickle_dir(t, good_splits()) / "JSB Chorales.pickle"],
     "exists and is not a directory"),
    ("mat: empty", lambda t: [*TRAIN, "--data-dir", mat_dir(t, b""), "--run-dir", t / "r"],
     "JSB_Chorales.mat: not a readable MATLAB .mat file (MatError: 0 bytes"),
    ("mat: random bytes", lambda t: [*TRAIN, "--data-dir", mat_dir(t, np.random.default_rng(0).bytes(3000)),
                                     "--run-dir", t / "r"], "JSB_Chorales.mat: not a readable MATLAB .mat file"),
    ("mat: zlib bomb declaring 2 GiB", lambda t: [*TRAIN, "--data-dir", mat_dir(t, zlib_bomb(2**31)),
                                                  "--run-dir", t / "r"],
     "compressed element declares 2147483648 bytes, more than the 268435456 allowed"),
    ("mat: compressed stream shorter than declared", lambda t: [*TRAIN, "--data-dir", mat_dir(t, zlib_bomb(10**6)),
                                                                "--run-dir", t / "r"],
     "compressed element ends after"),
    ("mat: element longer than the file", lambda t: [*TRAIN, "--data-dir", mat_dir(
        t, mat_header() + struct.pack("<II", 14, 2**31) + b"\0" * 64), "--run-dir", t / "r"],
     "element at byte 128 declares 2147483648 bytes, 64 remain"),
    ("mat: v7.3 (HDF5)", lambda t: [*TRAIN, "--data-dir", mat_dir(t, mat_header()[:124] + b"\x00\x02IM"),
                                    "--run-dir", t / "r"], "MAT v7.3 (HDF5)"),
    ("pickle: truncated", lambda t: [*TRAIN, "--data-dir", pickle_dir(t, data=pickle.dumps(good_splits())[:-20]),
                                     "--run-dir", t / "r"], "JSB Chorales.pickle: not a readable pickle"),
    ("pickle: note 20", lambda t: [*TRAIN, "--data-dir", pickle_dir(t, {**good_splits(), "test": [[[20]]] * 77}),
                                   "--run-dir", t / "r"], "test[0][0] holds note 20, outside MIDI 21..108"),
    ("pickle: note 109", lambda t: [*TRAIN, "--data-dir", pickle_dir(t, {**good_splits(), "valid": [[[109]]] * 76}),
                                    "--run-dir", t / "r"], "valid[0][0] holds note 109, outside MIDI 21..108"),
    ("pickle: empty sequence", lambda t: [*TRAIN, "--data-dir", pickle_dir(t, {**good_splits(), "test": [[]] * 77}),
                                          "--run-dir", t / "r"], "test[0] has shape (0, 88), expected (T, 88) with T > 0"),
    ("pickle: empty split", lambda t: [*TRAIN, "--data-dir", pickle_dir(t, {**good_splits(), "valid": []}),
                                       "--run-dir", t / "r"], "split valid is empty"),
    ("pickle: wrong split sizes", lambda t: [*TRAIN, "--data-dir", pickle_dir(t, {**good_splits(), "valid": [[[61]]]}),
                                             "--run-dir", t / "r"], "found 229/1/77 train/valid/test sequences"),
    ("pickle: not a dict", lambda t: [*TRAIN, "--data-dir", pickle_dir(t, [1, 2]), "--run-dir", t / "r"],
     "holds a list, expected a dict with keys train, valid, test"),
    ("wav: stereo", lambda t: [*TRAIN[:2], "wav:" + str(wav_dir(t, wav_bytes(channels=2))), *TRAIN[3:],
                               "--run-dir", t / "r"], "3.wav: 2 channels, expected mono"),
    ("wav: IEEE float", lambda t: [*TRAIN[:2], "wav:" + str(wav_dir(t, wav_bytes(width=4, fmt=3))), *TRAIN[3:],
                                   "--run-dir", t / "r"], "3.wav: not a readable PCM WAV file"),
    ("wav: truncated", lambda t: [*TRAIN[:2], "wav:" + str(wav_dir(t, wav_bytes()[:30])), *TRAIN[3:],
                                  "--run-dir", t / "r"], "3.wav: not a readable PCM WAV file"),
    ("wav: too short", lambda t: [*TRAIN[:2], "wav:" + str(wav_dir(t, wav_bytes(frames=10))), *TRAIN[3:],
                                  "--run-dir", t / "r"], "3.wav: 10 samples, expected at least 30"),
    ("wav: sample rate 2^31-1", lambda t: [*TRAIN[:2], "wav:" + str(wav_dir(t, wav_bytes(rate=2**31 - 1))),
                                           *TRAIN[3:], "--run-dir", t / "r"], "sample rate 2147483647 Hz"),
]


@pytest.mark.parametrize("name, make_args, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line_and_status_2(name, make_args, message, tmp_path, capsys):
    line = one_line_error(make_args(tmp_path), capsys)
    assert message in line
    assert not (tmp_path / "r" / "metrics.json").exists()


# -- a saved run with damaged files: `gatedrnn eval` ---------------------------------------------

@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    from gatedrnn.data.batching import music_examples
    from gatedrnn.train import train
    rng = np.random.default_rng(0)
    ex = {s: music_examples([(rng.random((4, 88)) < 0.1).astype(np.uint8) for _ in range(3)])
          for s in ("train", "valid", "test")}
    run = tmp_path_factory.mktemp("saved_run")
    train(train_config(hidden_size=3, epochs=1), run, ex, log=lambda s: None)
    return run


def damage_config(text):
    return lambda run: (run / "config.json").write_text(text)


def replace_config(change):
    def damage(run):
        config = json.loads((run / "config.json").read_text())
        change(config)
        (run / "config.json").write_text(json.dumps(config))
    return damage


def damage_model(transform):
    return lambda run: (run / "model.safetensors").write_bytes(transform((run / "model.safetensors").read_bytes()))


EVAL_CASES = [
    ("config: bad JSON", damage_config("{not json"), "config.json: not a readable JSON file"),
    ("config: a list", damage_config("[1, 2]"), "config.json: not a gatedrnn run config"),
    ("config: settings a list", replace_config(lambda c: c.update(config=[1])),
     "config.json: not a gatedrnn run config (no \"config\" object)"),
    ("config: lr a string", replace_config(lambda c: c["config"].update(lr="abc")),
     "config.json: lr must be a positive number, got 'abc'"),
    ("config: momentum a string", replace_config(lambda c: c["config"].update(momentum="x")),
     "config.json: momentum must be a number in [0, 1), got 'x'"),
    ("config: unknown key", replace_config(lambda c: c["config"].update(colour=1)),
     "config.json: unknown config keys ['colour']"),
    ("config: hidden size a string", replace_config(lambda c: c["config"]["model"].update(hidden_size="3")),
     "config.json: model: hidden_size must be a positive integer, got '3'"),
    ("config: huge hidden size", replace_config(lambda c: c["config"]["model"].update(hidden_size=10**9)),
     "hidden_size 1000000000: the model is too large to build"),
    ("config: model section a number", replace_config(lambda c: c["config"].update(model=3)),
     "config.json: model: the settings are int, expected a JSON object"),
    ("config: unknown unit", replace_config(lambda c: c["config"]["model"].update(cell="nosuch:Unit")),
     "config.json: model: unit 'nosuch:Unit': cannot import Unit from nosuch"),
    ("config: nested 100,000 deep", damage_config("[" * 100_000 + "]" * 100_000),
     "config.json: not a readable JSON file"),
    ("model: truncated", damage_model(lambda b: b[:len(b) // 2]), "model.safetensors: not a gatedrnn safetensors model"),
    ("model: huge header", damage_model(lambda b: (10**15).to_bytes(8, "little") + b[8:]),
     "model.safetensors: not a gatedrnn safetensors model (SafetensorError"),
    ("model: empty", damage_model(lambda b: b""), "model.safetensors: not a gatedrnn safetensors model"),
    ("model: missing", lambda run: (run / "model.safetensors").unlink(), "model.safetensors: model file not found"),
]


@pytest.mark.parametrize("name, damage, message", EVAL_CASES, ids=[c[0] for c in EVAL_CASES])
def test_damaged_run_directory_gets_one_line_and_status_2(name, damage, message, saved_run,
                                                          tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(saved_run, run)
    damage(run)
    assert message in one_line_error(["eval", run], capsys)


# -- hostile pickles ---------------------------------------------------------------------------

class ListSubclass(list):
    pass


def hostile_pickles(marker):
    """(name, bytes): pickles that would run code or build non-plain objects when loaded."""
    touch = f"touch {shlex.quote(str(marker))}"
    q = repr(touch).encode()
    return [
        ("GLOBAL os.system + REDUCE", b"cos\nsystem\n(" + b"S" + q + b"\ntR."),
        ("GLOBAL posix.system", b"cposix\nsystem\n(S" + q + b"\ntR."),
        ("STACK_GLOBAL builtins.eval", b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c" +
         bytes([len(f"__import__('os').system({touch!r})")]) +
         f"__import__('os').system({touch!r})".encode() + b"\x85R."),
        ("INST os.system", b"(S" + q + b"\nios\nsystem\n."),
        ("OBJ via GLOBAL subprocess.call", b"(csubprocess\ncall\n(S'sh'\nS'-c'\nS" + q + b"\nlo."),
        ("list subclass", pickle.dumps({"train": ListSubclass([[[60]]]), "valid": [], "test": []}, protocol=2)),
        ("EXT1 extension code", b"\x80\x02\x82\x01."),
        ("persistent id", b"\x80\x02X\x01\x00\x00\x00xQ."),
    ]


@pytest.mark.parametrize("case", range(8))
def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path, capsys, case):
    marker = tmp_path / "pwned"
    name, data = hostile_pickles(marker)[case]
    folder = pickle_dir(tmp_path, data=data)
    line = one_line_error([*TRAIN, "--data-dir", folder, "--run-dir", tmp_path / "r"], capsys)
    assert "JSB Chorales.pickle: " in line, name
    assert "refusing to load" in line or "not a readable pickle" in line, line
    assert not marker.exists(), name


def test_hostile_pickle_would_run_under_plain_pickle(tmp_path):
    """Control for the test above: the first payload is live."""
    marker = tmp_path / "pwned"
    pickle.loads(hostile_pickles(marker)[0][1])
    assert marker.exists()
    os.remove(marker)


# -- report: run directories whose metrics are not numbers -------------------------------------

@pytest.mark.parametrize("bad", ["8.1", float("nan"), None, float("inf")], ids=["string", "NaN", "null", "inf"])
def test_report_leaves_out_a_run_whose_nll_is_not_a_number_with_one_warning(bad, saved_run,
                                                                           tmp_path, capsys):
    root = tmp_path / "study"
    good = root / "runs" / "jsb" / "gru" / "paper" / "seeds" / "trial-0000"
    broken = good.parent / "trial-0001"
    for run in (good, broken):
        shutil.copytree(saved_run, run)
    metrics = json.loads((broken / "metrics.json").read_text())
    metrics["test_nll"] = bad
    (broken / "metrics.json").write_text(json.dumps(metrics))       # NaN / Infinity as JSON allows
    assert main(["report", str(root)]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and str(broken / "metrics.json") in warnings[0]
    assert "test_nll" in warnings[0] and "expected a finite number" in warnings[0]
    table = (root / "table2.md").read_text()
    assert "| jsb | gru | paper |" in table and "| nan" not in table.lower()
