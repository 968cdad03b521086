"""Raw speech: the paper's Ubisoft setting, on the Free Spoken Digit Dataset or any WAV directory.

Framing (the paper, section 4: "reads 20 consecutive samples and predicts the next 10"): a
normalised waveform x[0..N) gives T = (N - 30) // 20 + 1 steps; at step t (0-based) the input
is the frame x[20t : 20t + 20] and the target the next 10 samples x[20t + 20 : 20t + 30].
Frames do not overlap, so the model reads every sample and predicts the first half of each
next frame. Samples past the last whole step are dropped.

Datasets:
- ``fsdd``: each utterance one sequence (1,148 to 18,262 samples: about 55 to 900 steps).
- ``fsdd-long``: per speaker and split, the utterances concatenated in a fixed order (digit,
  then take) and cut into sequences of 8,000 steps (160,010 samples, 20 s at 8 kHz), the
  remainder kept as a shorter last sequence (Ubisoft B had 8,000-step sequences).
- ``wav:DIR``: every ``*.wav`` under DIR (sorted paths; every 10th file, starting with the
  first, to test, the next to validation, the rest to training), one sequence per file.
Splits of FSDD: the official test takes 0-4, validation takes 5-9, training takes 10-49; a
recording is in exactly one split. Amplitudes are normalised with the mean and standard
deviation of the training split's samples only (``fit_normalization``).
"""
import io
import math
import os
import re
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError, describe, read_user_file

FRAME = 20                  # samples read per step
PREDICT = 10                # samples predicted per step
FSDD_RATE = 8000            # Hz
LONG_STEPS = 8000           # steps per fsdd-long sequence
FSDD_SPLITS = {"test": range(0, 5), "valid": range(5, 10), "train": range(10, 50)}
FSDD_SIZES = {"train": 2400, "valid": 300, "test": 300}
_FSDD_NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")


@dataclass(frozen=True)
class Normalization:
    mean: float
    std: float

    def apply(self, wave_):
        return (np.asarray(wave_, np.float64) - self.mean) / self.std

    def to_dict(self):
        return {"mean": self.mean, "std": self.std}


MIN_RATE, MAX_RATE = 1000, 384_000   # sample rates we read and resample between


def read_wav(path, sample_rate=FSDD_RATE):
    """A mono integer-PCM WAV file as float32 in [-1, 1), resampled to ``sample_rate`` if needed."""
    path = Path(path)
    data = read_user_file(path)
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            channels, width, rate, n = (w.getnchannels(), w.getsampwidth(), w.getframerate(),
                                        w.getnframes())
            raw = w.readframes(n)
    except Exception as e:  # the wave module raises Error, EOFError, struct.error, RuntimeError, ...
        raise UserError(f"{path}: not a readable PCM WAV file ({describe(e)})") from None
    if channels != 1:
        raise UserError(f"{path}: {channels} channels, expected mono")
    if width not in (1, 2, 3, 4):
        raise UserError(f"{path}: {8 * width}-bit samples, expected 8, 16, 24 or 32-bit PCM")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise UserError(f"{path}: sample rate {rate} Hz, expected {MIN_RATE} to {MAX_RATE} Hz")
    frames = len(raw) // width
    if frames == 0:
        raise UserError(f"{path}: holds no audio samples")
    x = _pcm_to_float(raw[:frames * width], width)
    if rate != sample_rate:
        x = _resample(x, rate, sample_rate)
    return x


def _resample(x, rate, to):
    """Polyphase filtering for the usual rate pairs (44100 -> 8000 is 80 / 441); an FFT for odd
    ones like 8001 Hz, whose polyphase filter would have millions of taps."""
    from scipy.signal import resample, resample_poly
    g = math.gcd(rate, to)
    up, down = to // g, rate // g
    if max(up, down) <= 1000:
        return resample_poly(x, up, down).astype(np.float32)
    return resample(x, max(1, round(len(x) * to / rate))).astype(np.float32)


def _pcm_to_float(raw, width):
    if width == 1:                                   # 8-bit WAV is unsigned
        return (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
    if width == 3:                                   # 24-bit little-endian: widen to 32
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        raw = np.concatenate([np.zeros((len(b), 1), np.uint8), b], 1).tobytes()
        width = 4
    dtype = {2: "<i2", 4: "<i4"}[width]
    return np.frombuffer(raw, dtype).astype(np.float32) / float(2 ** (8 * width - 1))


def fsdd_files(root):
    """{split: [path]} of FSDD recordings under root/recordings, in (speaker, digit, take) order."""
    folder = Path(root) / "recordings"
    if not folder.is_dir():
        raise UserError(f"{root}: no recordings/ directory; expected the FSDD directory that "
                        "holds recordings/ (e.g. shared/data/speech/free-spoken-digit-dataset)")
    entries = []
    for path in folder.glob("*.wav"):
        m = _FSDD_NAME.match(path.name)
        if not m:
            raise UserError(f"{path}: not an FSDD recording name, expected DIGIT_SPEAKER_TAKE.wav")
        digit, speaker, take = int(m[1]), m[2], int(m[3])
        entries.append((speaker, digit, take, path))
    entries.sort()
    splits = {s: [p for sp, d, t, p in entries if t in takes] for s, takes in FSDD_SPLITS.items()}
    found = {s: len(v) for s, v in splits.items()}
    if found != FSDD_SIZES:
        raise UserError(f"{folder}: found {found['train']}/{found['valid']}/{found['test']} "
                        f"train/valid/test recordings, expected 2400/300/300")
    return {s: splits[s] for s in ("train", "valid", "test")}


def wav_files(root):
    """{split: [path]} for a directory of WAV files: every 10th to test, the next to valid."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"wav:{root}: not a directory; expected a directory of mono WAV files")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".wav" and p.is_file())
    if len(paths) < 3:
        raise UserError(f"wav:{root}: found {len(paths)} WAV files, expected at least 3 "
                        "(one each for training, validation and test)")
    return {"train": [p for i, p in enumerate(paths) if i % 10 >= 2],
            "valid": [p for i, p in enumerate(paths) if i % 10 == 1],
            "test": [p for i, p in enumerate(paths) if i % 10 == 0]}


def load_speech(name, data_dir=None, sample_rate=FSDD_RATE):
    """{split: [waveform float32]} for ``fsdd``, ``fsdd-long`` or ``wav:DIR``."""
    if name.startswith("wav:"):
        files = wav_files(name[4:])
        waves = {s: [_long_enough(read_wav(p, sample_rate), p) for p in ps] for s, ps in files.items()}
        return waves
    root = _fsdd_root(data_dir)
    files = fsdd_files(root)
    waves = {s: [_long_enough(read_wav(p, FSDD_RATE), p) for p in ps] for s, ps in files.items()}
    if name == "fsdd":
        return waves
    if name == "fsdd-long":
        return {s: _concatenate_by_speaker(files[s], waves[s]) for s in waves}
    raise UserError(f"unknown speech dataset {name!r}")


def _fsdd_root(data_dir):
    if data_dir is None and os.environ.get("GATEDRNN_DATA_DIR"):
        data_dir = os.environ["GATEDRNN_DATA_DIR"]
    if data_dir is None:
        from .fetch import fetch_fsdd
        return fetch_fsdd()
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"data_dir {data_dir} is not a directory; expected the FSDD directory "
                        "that holds recordings/")
    return root


def _long_enough(x, path):
    if len(x) < FRAME + PREDICT:
        raise UserError(f"{path}: {len(x)} samples, expected at least {FRAME + PREDICT} (one step)")
    return x


def _concatenate_by_speaker(paths, waves):
    """Per speaker: utterances in (digit, take) order, cut into LONG_STEPS-step sequences."""
    piece = FRAME * LONG_STEPS + PREDICT                 # samples for exactly LONG_STEPS steps
    by_speaker = {}
    for path, x in zip(paths, waves):
        by_speaker.setdefault(_FSDD_NAME.match(path.name)[2], []).append(x)
    out = []
    for speaker in sorted(by_speaker):
        x = np.concatenate(by_speaker[speaker])
        out += [x[i:i + piece] for i in range(0, len(x), piece) if len(x) - i >= FRAME + PREDICT]
    return out


def fit_normalization(train_waves):
    """Mean and standard deviation of all training samples."""
    x = np.concatenate(train_waves).astype(np.float64)
    std = float(x.std())
    if not std > 0:
        raise UserError("the training audio is constant (silent); cannot normalise it")
    return Normalization(float(x.mean()), std)


def frame(x):
    """Normalised waveform (N,) -> inputs (T, 20), targets (T, 10) as float32 tensors."""
    x = torch.as_tensor(np.asarray(x, np.float32))
    T = (len(x) - FRAME - PREDICT) // FRAME + 1
    inputs = x[:FRAME * T].reshape(T, FRAME)                          # x[20t : 20t+20]
    targets = x[FRAME:].unfold(0, PREDICT, FRAME)                     # x[20t+20 : 20t+30]
    return inputs, targets


def speech_examples(waves, norm: Normalization):
    return [frame(norm.apply(x)) for x in waves]


def iid_gaussian_nll(train_examples, examples):
    """NLL in nats per predicted sample of one Gaussian fitted to the normalised training
    samples (the targets), scored on ``examples``' targets: what no recurrence buys."""
    train = torch.cat([t.reshape(-1) for _, t in train_examples]).double()
    mu, var = train.mean(), train.var(unbiased=False)
    y = torch.cat([t.reshape(-1) for _, t in examples]).double()
    return float((0.5 * torch.log(2 * math.pi * var) + (y - mu) ** 2 / (2 * var)).mean())
