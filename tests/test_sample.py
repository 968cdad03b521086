"""gatedrnn sample: drawing from tiny real runs (music from MIDI files, speech from WAV files,
text), the files written, determinism, priming, the two-chain speech scheme, and one-line errors."""
import json
import math
import subprocess
import sys
import wave

import numpy as np
import pytest
import torch

from gatedrnn.data.midi import read_midi, write_midi
from gatedrnn.data.speech import frame, read_wav
from gatedrnn.errors import UserError
from gatedrnn.model import SequenceModel
from gatedrnn.sample import draw_shifted, draw_speech, sample_run
from gatedrnn.train import load_config_data, load_run, train
from helpers import model_config, train_config


def quiet(line):
    pass


def run_cli(*args):
    """The command in a subprocess, as a user runs it (real exit status and streams)."""
    return subprocess.run([sys.executable, "-m", "gatedrnn.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def tone_dir(root, n=12, rate=8000):
    """``n`` 16-bit WAVs of noisy sines, 600 to 1040 samples long."""
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        t = np.arange(600 + 40 * i) / rate
        x = 8000 * np.sin(2 * np.pi * (200 + 30 * i) * t) + rng.normal(0, 200, len(t))
        with wave.open(str(root / f"s{i:02d}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(np.clip(x, -32768, 32767).astype("<i2").tobytes())
    return root


@pytest.fixture(scope="module")
def music_run(tmp_path_factory):
    """A GRU trained for 2 epochs on 12 MIDI files: an arpeggio with random extra notes."""
    root = tmp_path_factory.mktemp("music")
    rng = np.random.default_rng(0)
    for i in range(12):
        roll = (rng.random((16 + 2 * i, 88)) < 0.03).astype(np.uint8)
        roll[np.arange(len(roll)), 39 + 4 * (np.arange(len(roll)) % 3)] = 1
        write_midi(roll, root / f"p{i:02d}.mid", steps_per_quarter=2)
    config = train_config(dataset=f"midi:{root}", cell="gru", hidden_size=8, epochs=2,
                          batch_size=4, lr=3e-3)
    train(config, root / "run", log=quiet)
    return root / "run"


@pytest.fixture(scope="module")
def speech_run(tmp_path_factory):
    """A GRU trained on 12 noisy sine WAVs at 8 kHz, read at 4 kHz (the run's rate)."""
    root = tmp_path_factory.mktemp("speech")
    data_dir = tone_dir(root / "wavs")
    config = train_config(dataset=f"wav:{data_dir}", cell="gru", hidden_size=8, components=3,
                          epochs=2, batch_size=4, lr=3e-3, sample_rate=4000)
    train(config, root / "run", log=quiet)
    return root / "run"


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran"]
    rng = np.random.default_rng(0)
    (root / "corpus.txt").write_text(" ".join(rng.choice(words, 600)) + "\n", encoding="utf-8")
    config = train_config(dataset=f"text:{root / 'corpus.txt'}", cell="lstm", hidden_size=8,
                          epochs=2, batch_size=8, lr=3e-3)
    train(config, root / "run", log=quiet)
    return root / "run"


def files(out):
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.suffix != ".json"}


# -- one step of the recurrence ----------------------------------------------------------------

@pytest.mark.parametrize("cell, variant, layers", [
    ("tanh", "paper", 1), ("gru", "paper", 1), ("gru", "torch", 2), ("lstm", "paper", 2),
    ("lstm", "torch", 1), ("mingru", "paper", 1), ("cifg", "paper", 1)])
@pytest.mark.filterwarnings("ignore:.*has no fast path")
def test_unit_step_carries_the_state_like_the_whole_sequence(cell, variant, layers):
    torch.manual_seed(0)
    model = SequenceModel(model_config(cell=cell, variant=variant, hidden_size=5, num_layers=layers,
                                       input_size=7, weight_noise=0.5)).eval()
    x = torch.randn(3, 9, 7)
    expected, final = model.rnn(x)                               # the fast backend, all at once
    state, outputs = None, []
    for t in range(9):
        h, state = model.rnn.one_step(x[:, t], state)
        outputs.append(h)
    torch.testing.assert_close(torch.stack(outputs, 1), expected, rtol=1e-5, atol=1e-6)
    for a, b in zip(state if isinstance(state, tuple) else (state,),
                    final if isinstance(final, tuple) else (final,)):
        assert a.shape == (layers, 3, 5)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# -- music ----------------------------------------------------------------------------------------

def test_music_sample_round_trips_through_midi(music_run, tmp_path):
    paths = sample_run(music_run, tmp_path, num=3, steps=12, seed=5, log=quiet)
    assert [p.name for p in paths] == ["sample-0.mid", "sample-0.png", "sample-1.mid",
                                       "sample-1.png", "sample-2.mid", "sample-2.png",
                                       "samples.json"]
    # the same draws, made again from the library's pieces
    _, model, _ = load_run(music_run)
    drawn = draw_shifted(model.eval(), torch.zeros(3, 88), 12, torch.Generator().manual_seed(5))
    for i in range(3):
        roll = read_midi(tmp_path / f"sample-{i}.mid", steps_per_quarter=2)
        assert roll.shape == (12, 88)
        np.testing.assert_array_equal(roll, drawn[i].numpy().astype(np.uint8))
    assert drawn.sum() > 0
    png = (tmp_path / "sample-0.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    manifest = json.loads((tmp_path / "samples.json").read_text())
    assert manifest["steps_per_quarter"] == 2 and manifest["tempo_bpm"] == 120
    assert manifest["sampled_seconds_per_sample"] == pytest.approx(12 * 60 / (120 * 2))
    assert manifest["seconds_per_sampled_second"] > 0
    assert not list(tmp_path.glob(".*"))                         # no temporary files left


def test_same_seed_same_files_another_seed_others(music_run, tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        sample_run(music_run, tmp_path / name, num=2, steps=20, seed=seed, log=quiet)
    a, b, c = (files(tmp_path / n) for n in "abc")
    assert a == b                                                # weight noise is off: eval mode
    assert a.keys() == c.keys() and a["sample-0.mid"] != c["sample-0.mid"]


def test_music_prime_keeps_the_test_sequence(music_run, tmp_path):
    config, _, record = load_run(music_run)
    test = load_config_data(config, record["data"]).examples["test"]
    K, N = 6, 5
    sample_run(music_run, tmp_path, num=2, steps=N, prime=K, seed=0, log=quiet)
    original = test[0][1].numpy().astype(np.uint8)                # targets: x_0, x_1, ...
    for i in range(2):
        roll = read_midi(tmp_path / f"sample-{i}.mid", 2)
        assert roll.shape == (K + N, 88)
        np.testing.assert_array_equal(roll[:K], original[:K])
        np.testing.assert_array_equal(read_midi(tmp_path / f"sample-{i}-original.mid", 2),
                                      original[:K + N])
    assert json.loads((tmp_path / "samples.json").read_text())["test_sequences"] == [0, 0]


def test_nade_head_samples(tmp_path):
    rng = np.random.default_rng(1)
    rolls = [(rng.random((10, 88)) < 0.05).astype(np.uint8) for _ in range(12)]
    for i, roll in enumerate(rolls):
        write_midi(roll, tmp_path / f"p{i:02d}.mid")      # split 9/2/1 by the names' hash
    config = train_config(dataset=f"midi:{tmp_path}", cell="lstm", hidden_size=4, head="nade",
                          nade_hidden=5, epochs=1, batch_size=4)
    train(config, tmp_path / "run", log=quiet)
    sample_run(tmp_path / "run", tmp_path / "a", num=1, steps=7, seed=2, log=quiet)
    sample_run(tmp_path / "run", tmp_path / "b", num=1, steps=7, seed=2, log=quiet)
    assert read_midi(tmp_path / "a" / "sample-0.mid").shape == (7, 88)
    assert files(tmp_path / "a") == files(tmp_path / "b")


# -- speech ---------------------------------------------------------------------------------------

def wav_info(path):
    with wave.open(str(path), "rb") as w:
        return w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()


def test_speech_wav_is_16_bit_mono_at_the_runs_rate(speech_run, tmp_path):
    paths = sample_run(speech_run, tmp_path, num=2, steps=25, seed=0, log=quiet)
    assert [p.name for p in paths] == ["sample-0.wav", "sample-0.png", "sample-1.wav",
                                       "sample-1.png", "samples.json"]
    for i in range(2):
        assert wav_info(tmp_path / f"sample-{i}.wav") == (1, 2, 4000, 25 * 20)
    x = read_wav(tmp_path / "sample-0.wav", 4000)
    assert np.abs(x).max() > 0.01                                # not silence
    manifest = json.loads((tmp_path / "samples.json").read_text())
    assert manifest["sample_rate"] == 4000
    assert manifest["sampled_seconds_per_sample"] == pytest.approx(25 * 20 / 4000)


def test_speech_files_are_the_drawn_waveform_unnormalised(speech_run, tmp_path):
    sample_run(speech_run, tmp_path, num=1, steps=10, seed=9, log=quiet)
    _, model, record = load_run(speech_run)
    norm = record["data"]["normalization"]
    silence = torch.full((1, 20), -norm["mean"] / norm["std"])
    drawn = draw_speech(model, silence, 10, torch.Generator().manual_seed(9))[0, 20:]
    expected = np.clip(np.round((drawn.double().numpy() * norm["std"] + norm["mean"]) * 32768),
                       -32768, 32767)
    got = read_wav(tmp_path / "sample-0.wav", 4000).astype(np.float64) * 32768
    np.testing.assert_array_equal(got, expected)


def test_speech_prime_keeps_the_test_frames(speech_run, tmp_path):
    K, N = 4, 6
    sample_run(speech_run, tmp_path, num=2, steps=N, prime=K, seed=1, log=quiet)
    for i in range(2):
        assert wav_info(tmp_path / f"sample-{i}.wav") == (1, 2, 4000, 20 * (K + N))
        assert wav_info(tmp_path / f"sample-{i}-original.wav") == (1, 2, 4000, 20 * (K + N))
        sample = read_wav(tmp_path / f"sample-{i}.wav", 4000)
        original = read_wav(tmp_path / f"sample-{i}-original.wav", 4000)
        np.testing.assert_array_equal(sample[:20 * K], original[:20 * K])
        assert not np.array_equal(sample[20 * K:], original[20 * K:])
    tests = json.loads((tmp_path / "samples.json").read_text())["test_sequences"]
    assert tests == [0, 1]                                       # two test files, in order


def test_both_speech_chains_read_the_training_framing(speech_run):
    """Every h the head draws from is the state that teacher forcing on the finished waveform
    gives: chain A on frame(wave), chain B on frame(wave[10:])."""
    _, model, _ = load_run(speech_run)
    model.eval()
    seen = []
    sample = model.head.sample
    model.head.sample = lambda h, **kw: (seen.append(h.clone()), sample(h, **kw))[1]
    K, N = 3, 7
    start = torch.randn(2, 20 * K)
    wave_ = draw_speech(model, start, N, torch.Generator().manual_seed(0))
    assert wave_.shape == (2, 20 * (K + N)) and torch.equal(wave_[:, :20 * K], start)
    assert len(seen) == 2 * N
    for b in range(2):
        inputs_a, _ = frame(wave_[b].numpy())                    # x[20t : 20t + 20]
        inputs_b, _ = frame(wave_[b, 10:].numpy())               # x[20t + 10 : 20t + 30]
        h_a = model.rnn(inputs_a[None])[0][0]                    # (T, H)
        h_b = model.rnn(inputs_b[None])[0][0]
        for n in range(N):
            torch.testing.assert_close(seen[2 * n][b], h_a[K - 1 + n], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(seen[2 * n + 1][b], h_b[K - 1 + n], rtol=1e-5, atol=1e-6)


# -- text -----------------------------------------------------------------------------------------

def test_text_sample_is_decoded_with_the_vocabulary(text_run, tmp_path):
    _, _, record = load_run(text_run)
    vocab = record["data"]["vocab"]
    sample_run(text_run, tmp_path / "a", num=2, steps=40, seed=0, log=quiet)
    sample_run(text_run, tmp_path / "b", num=2, steps=40, seed=0, log=quiet)
    text = (tmp_path / "a" / "sample-0.txt").read_text(encoding="utf-8")
    assert len(text) == 40 and set(text) <= set(vocab)
    assert files(tmp_path / "a") == files(tmp_path / "b")
    sample_run(text_run, tmp_path / "p", num=1, steps=10, prime=15, seed=0, log=quiet)
    primed = (tmp_path / "p" / "sample-0.txt").read_text(encoding="utf-8")
    original = (tmp_path / "p" / "sample-0-original.txt").read_text(encoding="utf-8")
    assert len(primed) == 25 and primed[:15] == original[:15]


# -- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"num": 0}, "num must be a positive integer, got 0"),
    ({"steps": 0}, "steps must be a positive integer, got 0"),
    ({"prime": -1}, "prime must be an integer >= 0, got -1"),
    ({"temperature": 0.0}, "temperature must be a positive number, got 0.0"),
    ({"temperature": math.nan}, "temperature must be a positive number"),
    ({"temperature": math.inf}, "temperature must be a positive number"),
    ({"seed": 1.5}, "seed must be an integer, got 1.5"),
    ({"prime": 10_000}, "prime 10000 steps is longer than every test sequence"),
])
def test_bad_arguments_are_one_line_user_errors(music_run, tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message) as e:
        sample_run(music_run, tmp_path / "out", **kwargs, log=quiet)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_missing_run_and_output_file_are_user_errors(music_run, tmp_path):
    with pytest.raises(UserError, match="run directory not found"):
        sample_run(tmp_path / "nothing", tmp_path / "out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="exists and is not a directory"):
        sample_run(music_run, tmp_path / "file")


def test_cli_sample(music_run, tmp_path):
    r = run_cli("sample", music_run, "--out", tmp_path / "out", "--num", 2, "--steps", 8,
                "--prime", 3, "--temperature", 0.8, "--seed", 1)
    assert r.returncode == 0, r.stderr
    assert "s per sampled second" in r.stdout
    assert (tmp_path / "out" / "sample-1-original.mid").is_file()
    assert read_midi(tmp_path / "out" / "sample-1.mid").shape == (11, 88)
    for args, message in (((tmp_path / "none", "--out", tmp_path / "o"), "run directory not found"),
                          ((music_run, "--out", tmp_path / "o", "--prime", 999), "prime 999"),
                          ((music_run, "--out", tmp_path / "o", "--num", 0), "num must be")):
        r = run_cli("sample", *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], r.stderr


# -- real data ------------------------------------------------------------------------------------

def test_jsb_prime_writes_the_test_chorale(polyphonic_dir, tmp_path):
    from gatedrnn.data import load_data
    config = train_config(dataset="jsb", data_dir=str(polyphonic_dir), cell="gru", hidden_size=8,
                          epochs=1, batch_size=128)
    train(config, tmp_path / "run", log=quiet)
    sample_run(tmp_path / "run", tmp_path / "out", num=2, steps=6, prime=4, seed=0, log=quiet)
    chorales = load_data("jsb", polyphonic_dir).examples["test"]
    manifest = json.loads((tmp_path / "out" / "samples.json").read_text())
    assert manifest["steps_per_quarter"] == 1                   # JSB Chorales: quarter notes
    for i in range(2):
        original = chorales[i][1].numpy().astype(np.uint8)[:10]
        np.testing.assert_array_equal(read_midi(tmp_path / "out" / f"sample-{i}-original.mid", 1),
                                      original)
        np.testing.assert_array_equal(read_midi(tmp_path / "out" / f"sample-{i}.mid", 1)[:4],
                                      original[:4])


def test_fsdd_prime_writes_the_recording_back_exactly(fsdd_dir, tmp_path):
    """Normalised, framed, un-normalised and rounded again, the primed span is the recording's
    own 16-bit samples."""
    recordings = sorted((fsdd_dir / "recordings").glob("*_jackson_*.wav"))[:12]
    (tmp_path / "wavs").mkdir()
    for p in recordings:
        (tmp_path / "wavs" / p.name).symlink_to(p)
    config = train_config(dataset=f"wav:{tmp_path / 'wavs'}", cell="lstm", hidden_size=6,
                          components=3, epochs=1, batch_size=4, tbptt=50)
    train(config, tmp_path / "run", log=quiet)
    K, N = 5, 8
    sample_run(tmp_path / "run", tmp_path / "out", num=1, steps=N, prime=K, seed=0, log=quiet)
    recording = read_wav(recordings[0])                          # the first test file
    original = read_wav(tmp_path / "out" / "sample-0-original.wav")
    np.testing.assert_array_equal(original * 32768, recording[:20 * (K + N)] * 32768)
    sample = read_wav(tmp_path / "out" / "sample-0.wav")
    np.testing.assert_array_equal(sample[:20 * K], recording[:20 * K])
    assert wav_info(tmp_path / "out" / "sample-0.wav") == (1, 2, 8000, 20 * (K + N))


@pytest.mark.parametrize("kind", ["real", "tokens", "binary"])
def test_npz_samples_are_arrays_in_the_files_units(tmp_path, kind):
    rng = np.random.default_rng(0)
    make = {"real": lambda n: rng.normal(5.0, 3.0, (n, 12, 2)).astype(np.float32),
            "tokens": lambda n: rng.integers(0, 6, (n, 12)),
            "binary": lambda n: rng.random((n, 12, 5)) < 0.3}[kind]
    data = {"train": make(8), "valid": make(2), "test": make(2)}
    np.savez(tmp_path / "d.npz", **data)
    config = train_config(dataset=f"npz:{tmp_path / 'd.npz'}", cell="gru", hidden_size=4,
                          components=2, epochs=1, batch_size=4)
    train(config, tmp_path / "run", log=quiet)
    sample_run(tmp_path / "run", tmp_path / "out", num=1, steps=5, prime=3, seed=0, log=quiet)
    sample = np.load(tmp_path / "out" / "sample-0.npy")
    original = np.load(tmp_path / "out" / "sample-0-original.npy")
    assert len(sample) == len(original) == 8
    assert sample.dtype == {"real": np.float32, "tokens": np.int64, "binary": np.uint8}[kind]
    np.testing.assert_allclose(original, data["test"][0][:8], rtol=1e-5)   # un-normalised
    np.testing.assert_array_equal(sample[:3], original[:3])
