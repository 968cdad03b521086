"""Raw speech: framing, normalisation, WAV reading, the mixture head, FSDD splits, truncated
BPTT and a short training run."""
import csv
import json
import math
import threading
import wave
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from gatedrnn.cells import UNITS, count_parameters
from gatedrnn.data import SPEECH_TASK, load_data, task_of
from gatedrnn.data.batching import pad
from gatedrnn.data.fetch import FSDD_DIGEST, fetch_fsdd
from gatedrnn.data.speech import (LONG_STEPS, Normalization, fit_normalization, frame, read_wav,
                                  speech_examples)
from gatedrnn.errors import UserError
from gatedrnn.heads import MixtureGaussianHead
from gatedrnn.model import SequenceModel
from gatedrnn.train import evaluate_run, train
from helpers import model_config, train_config


def write_wav(path, samples, rate=8000, width=2, channels=1):
    samples = np.asarray(samples)
    if width == 1:
        raw = (samples + 128).astype(np.uint8).tobytes()
    elif width == 3:
        raw = b"".join(int(v).to_bytes(3, "little", signed=True) for v in samples.reshape(-1))
    else:
        raw = samples.astype({2: "<i2", 4: "<i4"}[width]).tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)


# -- framing and normalisation --------------------------------------------------------------------

def test_framing_alignment_on_a_hand_made_signal():
    x = np.arange(75, dtype=np.float32)                 # T = (75 - 30) // 20 + 1 = 3 steps
    inputs, targets = frame(x)
    assert inputs.shape == (3, 20) and targets.shape == (3, 10)
    assert inputs[0].tolist() == list(range(0, 20))
    assert inputs[2].tolist() == list(range(40, 60))
    assert targets[0].tolist() == list(range(20, 30))    # the 10 samples after frame 0
    assert targets[1].tolist() == list(range(40, 50))
    assert targets[2].tolist() == list(range(60, 70))    # samples 70..74 are never used
    assert frame(np.arange(30))[0].shape == (1, 20)      # the shortest signal: one step
    assert frame(np.arange(69))[0].shape == (2, 20)


def test_normalisation_uses_training_statistics_only(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(20):                                  # files 0 and 10 are test, 1 and 11 valid
        scale = 20000 if i % 10 == 0 else 1000
        write_wav(tmp_path / f"{i:02d}.wav", rng.normal(0, scale, 400).clip(-32768, 32767))
    data = load_data(f"wav:{tmp_path}")
    train_waves = [read_wav(tmp_path / f"{i:02d}.wav") for i in range(20) if i % 10 >= 2]
    x = np.concatenate(train_waves).astype(np.float64)
    assert data.info["normalization"] == pytest.approx({"mean": x.mean(), "std": x.std()})
    assert len(data.examples["test"]) == 2 and len(data.examples["valid"]) == 2
    # the loud test files stay loud: they were scaled by the training statistics
    test_std = torch.cat([t.reshape(-1) for _, t in data.examples["test"]]).std().item()
    assert test_std > 10
    # a saved normalisation is applied again as given
    again = load_data(f"wav:{tmp_path}", info={"normalization": {"mean": 0.0, "std": 1.0}})
    assert again.info["normalization"] == {"mean": 0.0, "std": 1.0}


def test_silent_training_audio_is_refused():
    with pytest.raises(UserError, match="silent"):
        fit_normalization([np.zeros(100, np.float32)])


# -- WAV files ----------------------------------------------------------------------------------

@pytest.mark.parametrize("width, peak", [(1, 127), (2, 32767), (3, 8388607), (4, 2147483647)])
def test_read_wav_pcm_widths(tmp_path, width, peak):
    samples = np.array([0, peak // 2, -peak // 2, peak, -peak - 1])
    write_wav(tmp_path / "a.wav", samples, width=width)
    x = read_wav(tmp_path / "a.wav")
    assert x.dtype == np.float32
    assert x == pytest.approx(samples / (peak + 1), abs=1e-6)


@pytest.mark.parametrize("rate", [1, 999, 2**31 - 1])
def test_read_wav_refuses_implausible_sample_rates(tmp_path, rate):
    write_wav(tmp_path / "a.wav", np.zeros(100), rate=rate)
    with pytest.raises(UserError, match=f"a.wav: sample rate {rate} Hz, expected 1000 to 384000"):
        read_wav(tmp_path / "a.wav")


def test_read_wav_resamples_to_the_stated_rate(tmp_path):
    t = np.arange(1600) / 16000
    write_wav(tmp_path / "a.wav", 10000 * np.sin(2 * np.pi * 440 * t), rate=16000)
    x = read_wav(tmp_path / "a.wav", sample_rate=8000)
    assert len(x) == 800
    expected = 10000 / 32768 * np.sin(2 * np.pi * 440 * np.arange(800) / 8000)
    assert np.abs(x[50:-50] - expected[50:-50]).max() < 0.01   # away from the edges


@pytest.mark.parametrize("make, message", [
    (lambda p: write_wav(p, np.zeros((50, 2)), channels=2), "2 channels, expected mono"),
    (lambda p: p.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x03\x00\x01\x00"
                             b"\x40\x1f\x00\x00\x00\x7d\x00\x00\x04\x00\x20\x00data\x00\x00\x00\x00"),
     "not a readable PCM WAV file"),                                      # IEEE float format
    (lambda p: p.write_bytes(b"not a wav file at all"), "not a readable PCM WAV file"),
    (lambda p: write_wav(p, np.zeros(0)), "holds no audio samples"),
])
def test_bad_wav_files_are_user_errors(tmp_path, make, message):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(UserError, match=message) as e:
        read_wav(path)
    assert str(path) in str(e.value)


def test_truncated_wav_is_a_user_error(tmp_path):
    write_wav(tmp_path / "a.wav", np.arange(1000))
    data = (tmp_path / "a.wav").read_bytes()
    (tmp_path / "a.wav").write_bytes(data[:30])
    with pytest.raises(UserError, match="a.wav"):
        read_wav(tmp_path / "a.wav")


def test_wav_directory_errors(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        load_data(f"wav:{tmp_path / 'missing'}")
    write_wav(tmp_path / "a.wav", np.arange(100))
    with pytest.raises(UserError, match="found 1 WAV files, expected at least 3"):
        load_data(f"wav:{tmp_path}")
    with pytest.raises(UserError, match="unknown dataset"):
        task_of("wav:")


# -- the mixture head ----------------------------------------------------------------------------

def test_mixture_nll_matches_torch_distributions():
    torch.manual_seed(0)
    head = MixtureGaussianHead(7, 10, components=5).double()
    h = torch.randn(3, 4, 7, dtype=torch.double)
    y = torch.randn(3, 4, 10, dtype=torch.double)
    logits, mean, scale = head(h)
    assert logits.shape == (3, 4, 5) and mean.shape == scale.shape == (3, 4, 5, 10)
    ref = MixtureSameFamily(Categorical(logits=logits), Independent(Normal(mean, scale), 1))
    assert torch.allclose(head.nll((logits, mean, scale), y), -ref.log_prob(y), atol=1e-10)


def test_mixture_of_one_gaussian_by_hand():
    head = MixtureGaussianHead(1, 2, components=1, min_scale=0.0)
    logits, mean, scale = torch.zeros(1, 1, 1), torch.tensor([[[[0.5, -1.0]]]]), \
        torch.tensor([[[[2.0, 0.5]]]])
    y = torch.tensor([[[1.5, 0.0]]])
    expected = sum(0.5 * ((yv - m) / s) ** 2 + math.log(s) + 0.5 * math.log(2 * math.pi)
                   for yv, m, s in ((1.5, 0.5, 2.0), (0.0, -1.0, 0.5)))
    assert head.nll((logits, mean, scale), y).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("target", [0.0, 1 / 0.06, -1 / 0.06])   # silence, clipped full scale
def test_mixture_is_finite_on_silence_and_clipping(target):
    torch.manual_seed(0)
    head = MixtureGaussianHead(8, 10)
    h = torch.randn(2, 5, 8) * 50                        # large activations: extreme parameters
    y = torch.full((2, 5, 10), target)
    nll = head.nll(head(h), y)
    nll.sum().backward()
    assert torch.isfinite(nll).all()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())
    # the scale floor bounds the density: at most 10 * (-log(min_scale) - log(sqrt(2 pi)))
    assert nll.min().item() >= -10 * (math.log(1 / head.min_scale) - 0.5 * math.log(2 * math.pi))


# -- model sizes, TBPTT -----------------------------------------------------------------------------

@pytest.mark.parametrize("cell, count", [("tanh", 168_400), ("gru", 168_888), ("lstm", 169_065)])
def test_speech_models_have_table1_sizes(cell, count):
    mc = model_config(SPEECH_TASK, cell=cell)
    assert (mc.input_size, mc.output_size, mc.head) == (20, 10, "gmm")
    model = SequenceModel(mc)
    assert model.recurrent_params() == count == count_parameters(UNITS[cell], 20, mc.hidden_size)
    assert model.num_params() == count + mc.hidden_size * 420 + 420   # 20 x (1 + 2 x 10) outputs


def test_chunks_carry_state_exactly():
    torch.manual_seed(0)
    model = SequenceModel(model_config(cell="lstm", hidden_size=6, input_size=20, output_size=10,
                                      head="gmm", components=3)).eval()
    waves = [np.random.default_rng(i).normal(0, 1, n) for i, n in enumerate((700, 430, 290))]
    batch = pad(speech_examples(waves, Normalization(0.0, 1.0)))
    full = model.step_nll(batch.inputs, batch.targets, batch.lengths)
    state, parts = None, []
    for chunk in batch.chunks(7):
        nll, state = model.chunk_nll(chunk.inputs, chunk.targets, chunk.lengths, state)
        parts.append(nll)
    assert [c.inputs.shape[1] for c in batch.chunks(7)] == [7, 7, 7, 7, 6]      # T = 34
    assert sum(c.steps for c in batch.chunks(7)) == batch.steps
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


# -- training end to end ---------------------------------------------------------------------------

def sine_dir(tmp_path, n=12):
    tmp_path.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        t = np.arange(600 + 40 * i) / 8000
        x = 8000 * np.sin(2 * np.pi * (200 + 30 * i) * t) + rng.normal(0, 200, len(t))
        write_wav(tmp_path / f"s{i:02d}.wav", x)
    return tmp_path


@pytest.mark.parametrize("tbptt", [None, 8])
def test_short_speech_training_run(tmp_path, tbptt):
    data_dir = sine_dir(tmp_path / "wavs")
    config = train_config(dataset=f"wav:{data_dir}", cell="gru", hidden_size=8, components=3,
                         epochs=4, batch_size=4, lr=3e-3, tbptt=tbptt)
    m = train(config, tmp_path / "run", log=lambda s: None)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert set(saved["data"]["normalization"]) == {"mean", "std"}
    assert m["test_nll_per_sample"] == pytest.approx(m["test_nll"] / 10)
    base = m["baseline_iid_gaussian_per_sample"]
    assert base["test"] > 0.5                            # a Gaussian fits noisy sines poorly
    assert m["test_nll_per_sample"] < base["test"]       # the recurrence already helps
    rows = list(csv.DictReader((tmp_path / "run" / "curves.csv").open()))
    steps = [len(i) for i, _ in load_data(f"wav:{data_dir}").examples["train"]]
    per_epoch = sum(math.ceil(max(b) / (tbptt or max(b)))
                    for b in (sorted(steps)[i:i + 4] for i in range(0, len(steps), 4)))
    assert int(rows[0]["updates"]) == per_epoch
    again = evaluate_run(tmp_path / "run")
    assert again["test_nll"] == pytest.approx(m["test_nll"], rel=1e-9)


@pytest.mark.parametrize("cell", ["tanh", "gru", "lstm"])
def test_cli_speech_smoke_per_unit(tmp_path, cell):
    import subprocess
    import sys
    data_dir = sine_dir(tmp_path / "wavs")
    r = subprocess.run([sys.executable, "-m", "gatedrnn.cli", "train", "--dataset",
                        f"wav:{data_dir}", "--cell", cell, "--hidden-size", "6", "--epochs", "1",
                        "--tbptt", "10", "--run-dir", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["test_nll_per_sample"] == pytest.approx(m["test_nll"] / 10)


# -- FSDD -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fsdd(fsdd_dir):
    return load_data("fsdd", fsdd_dir)


def test_fsdd_splits_and_sizes(fsdd_dir, fsdd):
    from gatedrnn.data.speech import fsdd_files
    files = fsdd_files(fsdd_dir)
    assert {s: len(v) for s, v in files.items()} == {"train": 2400, "valid": 300, "test": 300}
    names = {s: {p.name for p in v} for s, v in files.items()}
    assert not (names["train"] & names["valid"] or names["train"] & names["test"]
                or names["valid"] & names["test"])
    takes = {s: {int(n.split("_")[2][:-4]) for n in v} for s, v in names.items()}
    assert takes == {"test": set(range(5)), "valid": set(range(5, 10)), "train": set(range(10, 50))}
    steps = {s: sum(len(i) for i, _ in ex) for s, ex in fsdd.examples.items()}
    assert 400_000 < steps["train"] < 430_000 and fsdd.task is SPEECH_TASK
    assert fsdd.baseline["test"] == pytest.approx(0.5 * math.log(2 * math.pi * math.e), abs=0.05)


def test_fsdd_long_sequences(fsdd_dir):
    data = load_data("fsdd-long", fsdd_dir)
    for split, ex in data.examples.items():
        lengths = [len(i) for i, _ in ex]
        assert max(lengths) == LONG_STEPS
        assert sum(n == LONG_STEPS for n in lengths) >= 3
    short = load_data("fsdd", fsdd_dir)
    # the same audio, cut differently: the test split's samples are all there
    assert sum(len(i) for i, _ in data.examples["test"]) * 20 == pytest.approx(
        sum(len(i) for i, _ in short.examples["test"]) * 20, rel=0.05)


def test_fsdd_fetch_from_a_local_server(tmp_path, fsdd_dir, monkeypatch):
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    # a mirror with one recording altered, then the real one
    bad = tmp_path / "bad"
    (bad / "recordings").mkdir(parents=True)
    for p in (fsdd_dir / "recordings").glob("*.wav"):
        (bad / "recordings" / p.name).symlink_to(p)
    victim = bad / "recordings" / "3_theo_7.wav"
    data = victim.read_bytes()
    victim.unlink()
    victim.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    for root, ok in ((bad, False), (fsdd_dir, True)):
        handler = partial(SimpleHTTPRequestHandler, directory=str(root))
        handler.log_message = lambda *a: None
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            if ok:
                dest = fetch_fsdd(tmp_path / "cache", base_url=url)
            else:
                with pytest.raises(UserError, match="do not match the pinned FSDD digest"):
                    fetch_fsdd(tmp_path / "cache", base_url=url)
                assert not list((tmp_path / "cache").iterdir())   # nothing half-fetched left
        finally:
            server.shutdown()
            server.server_close()
    assert (dest / ".verified").read_text().strip() == FSDD_DIGEST
    assert len(list((dest / "recordings").glob("*.wav"))) == 3000
    assert fetch_fsdd(tmp_path / "cache", base_url="http://127.0.0.1:9") == dest   # cached
    monkeypatch.delenv("GATEDRNN_DATA_DIR", raising=False)
    monkeypatch.setenv("GATEDRNN_CACHE", str(tmp_path / "cache"))
    assert len(load_data("fsdd").examples["test"]) == 300
