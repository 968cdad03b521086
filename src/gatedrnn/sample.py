"""Drawing sequences from a run's best model: ``sample_run(run_dir, out, ...)``.

The model is run one step at a time in eval mode (no weight noise, no dropout), its state
carried from step to step; at every step its head draws the next step from p(x_t | x_<t)
with a seeded torch.Generator, so one seed gives the same files (for the same ``num``: the
``num`` samples are drawn together, as one batch). ``prime`` K starts each sample from the
first K steps of a test sequence, read with teacher forcing: sample i from the i-th test
sequence of at least K steps, in the split's order (cycling); the sample holds those K steps
and then ``steps`` drawn ones, and the original sequence's same K + steps span (as far as it
goes) is written beside it (``-original``), so a listener can compare the continuations.

What is drawn and written, by the run's data:

- music (jsb, nottingham, musedata, pianomidi, midi:DIR; Bernoulli or NADE head): the model
  reads x_{t-1} (zeros at t = 0) and draws the 88 notes of x_t. A Standard MIDI file of one
  track (data/midi.py's write_midi, ``tempo_bpm`` quarter notes per minute, default 120), at
  the roll's resolution: the run's steps_per_quarter for midi:DIR, the documented one of the
  named sets (JSB Chorales: quarter notes, 1 per quarter; the others: eighth notes, 2);
  ``read_midi`` of the file gives the sampled roll back. A piano-roll PNG beside it.
- speech (fsdd, fsdd-long, wav:DIR; Gaussian mixture head): 16-bit mono WAV at the run's
  sample rate, un-normalised with the run's saved statistics and clipped to int16, and a
  waveform-and-spectrogram PNG; a step is 20 samples, so 20 (K + steps) samples. How the
  frames are fed back: ``draw_speech``. Without a prime the first frame read is 20 samples of
  digital silence (amplitude 0), not written.
- text (text:FILE; categorical head): the characters, decoded with the run's vocabulary, in a
  UTF-8 .txt file (token 0, UNK, is written as U+FFFD).
- npz:FILE: the sequence as a .npy array (tokens (T,) int64, binary (T, D) uint8, real (T, D)
  float32 un-normalised with the run's per-dimension statistics).

``samples.json`` in ``out`` records the settings, the test sequences used for priming, and the
time: seconds of wall clock spent drawing (the teacher-forced prime left out) per second of
drawn music or audio, all ``num`` samples drawn together as one batch, on one thread.
"""
import io
import math
import time
import wave
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from . import kernels, rundir
from .data import MUSIC, SPEECH
from .data.speech import FRAME, PREDICT
from .errors import UserError
from .train import load_config_data, load_run

HALF = FRAME - PREDICT          # 10: how far apart the two interleaved speech chains read
DEFAULT_STEPS = {"music": 200, "text": 500, "npz": 200}   # speech: one second of audio
STEPS_PER_QUARTER = {"jsb": 1, "nottingham": 2, "musedata": 2, "pianomidi": 2}
TEMPO_BPM = 120
HEADS_OF = {"music": ("bernoulli", "nade"), "speech": ("gmm",), "text": ("categorical",),
            "npz": ("bernoulli", "nade", "gmm", "categorical")}


def kind_of(dataset):
    """music | speech | text | npz: what a run's samples are written as."""
    if dataset in MUSIC or dataset.startswith("midi:"):
        return "music"
    if dataset in SPEECH or dataset.startswith("wav:"):
        return "speech"
    return "text" if dataset.startswith("text:") else "npz"


# -- one step of the recurrence ----------------------------------------------------------------

# -- drawing --------------------------------------------------------------------------------------

@torch.no_grad()
def draw_shifted(model, x, steps, generator, temperature=1.0, state=None, encode=None):
    """Draw ``steps`` steps from a model that reads x_{t-1} and predicts x_t (music, text, npz).

    x (B, I): the first input, zeros without a prime (as in training); after K primed steps
    x_{K-1}, with ``state`` the state after them (model.rnn over the teacher-forced inputs
    x_{-1} = 0, x_0, ..., x_{K-2}). Each draw y (B, D), or (B,) tokens, becomes the next input
    through ``encode`` (default: itself). Returns the draws (B, steps, D) or (B, steps)."""
    model.eval()
    encode = encode or (lambda y: y)
    out = []
    for _ in range(steps):
        h, state = model.rnn.one_step(x, state)
        y = model.head.sample(h, generator=generator, temperature=temperature)
        out.append(y)
        x = encode(y).to(h.dtype)
    return torch.stack(out, 1)


@torch.no_grad()
def speech_states(model, start):
    """The states of draw_speech's chains A and B after the K primed frames of ``start``
    (B, 20 K) (teacher forcing, K - 1 frames per chain in one call each; None for K = 1)."""
    B, K = start.shape[0], start.shape[1] // FRAME
    if K < 1 or start.shape[1] != K * FRAME:
        raise UserError(f"a speech prime must be whole frames of {FRAME} samples, at least one; "
                        f"got {start.shape[1]} samples")
    if K == 1:
        return [None, None]
    n = FRAME * (K - 1)
    return [model.rnn(start[:, :n].reshape(B, K - 1, FRAME))[1],              # x[20t : 20t+20]
            model.rnn(start[:, HALF:HALF + n].reshape(B, K - 1, FRAME))[1]]   # x[20t+10 : ...]


@torch.no_grad()
def draw_speech(model, start, steps, generator, temperature=1.0, states=None):
    """Continue normalised waveforms ``start`` (B, 20 K), K >= 1 whole frames, by ``steps``
    steps of 20 samples; returns (B, 20 (K + steps)), ``start`` first.

    The model was trained on frames that do not overlap: step t reads x[20t : 20t+20] and
    predicts x[20t+20 : 20t+30], the first half of the next frame; the second half,
    x[20t+30 : 20t+40], is read at step t + 1 but no step predicts it. A single chain of steps
    therefore cannot draw a whole next frame. Here two chains of the same model, with separate
    states, take turns, 10 samples apart:

        chain A (step j = 2t):     reads x[20t : 20t+20],      draws x[20t+20 : 20t+30]
        chain B (step j = 2t + 1): reads x[20t+10 : 20t+30],   draws x[20t+30 : 20t+40]

    i.e. half-step j reads the last 20 samples so far, x[10j : 10j+20], with state j mod 2, and
    draws the next 10. Each chain reads exactly the framing it was trained on (chain B that of
    the waveform with its first 10 samples dropped): frames of 20 samples at a stride of 20,
    every sample read once, each draw the trained prediction of the 10 samples after the
    frame just read, conditioned on everything before through that chain's state. Nothing is
    interpolated or drawn twice. (One chain fed the last 20 samples every 10 would read frames
    overlapping by half, a stride it never saw; filling the unpredicted half with a second draw
    from the same state, or by interpolation, would feed it samples it never predicted.)

    Limits: the model defines no distribution over the halves it does not predict, so the
    waveform is not a draw from one joint distribution that its NLL scores: half of it comes
    from chain A's conditionals and half from chain B's, the same trained conditionals on a
    framing shifted by 10 samples. The chains share no state; each sees the other's draws only
    through the frames it reads (as in training, where a step sees the past only through the
    frames read). Two recurrent steps per 20 samples. The K primed frames are read with teacher
    forcing (``states``, from speech_states, if given); the first draw continues right after
    them.
    """
    model.eval()
    states = list(states) if states is not None else speech_states(model, start)   # A, B
    B, K = start.shape[0], start.shape[1] // FRAME
    wave_ = torch.empty(B, FRAME * (K + steps), dtype=start.dtype)
    wave_[:, :FRAME * K] = start
    for j in range(2 * K - 2, 2 * (K + steps) - 2):
        c = j % 2
        h, states[c] = model.rnn.one_step(wave_[:, HALF * j:HALF * j + FRAME], states[c])
        wave_[:, HALF * j + FRAME:HALF * j + FRAME + PREDICT] = model.head.sample(
            h, generator=generator, temperature=temperature)
    return wave_


# -- the command -----------------------------------------------------------------------------------

def sample_run(run_dir, out, num=4, steps=None, prime=0, temperature=1.0, seed=0, data_dir=None,
               tempo_bpm=TEMPO_BPM, log=None):
    """Draw ``num`` sequences of ``steps`` steps (after ``prime`` primed ones) from the best
    model of ``run_dir`` into the directory ``out``; returns the paths written (samples.json
    last). See the module docstring for what is written; every problem is a one-line UserError.
    """
    num, prime, seed = (_integer(name, v, low) for name, v, low in
                        (("num", num, 1), ("prime", prime, 0), ("seed", seed, None)))
    if steps is not None:
        steps = _integer("steps", steps, 1)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not 0 < temperature < math.inf:
        raise UserError(f"temperature must be a positive number, got {temperature!r}")
    config, model, record = load_run(run_dir)
    model.eval()
    kind = kind_of(config.dataset)
    head = model.config.head
    if head not in HEADS_OF[kind]:
        raise UserError(f"{run_dir}: sampling a {head} head on {kind} data ({config.dataset}) "
                        f"is not supported; expected a {' or '.join(HEADS_OF[kind])} head")
    data_info = record.get("data") or {}
    if kind == "speech" and not isinstance(data_info.get("normalization"), dict):
        raise UserError(f"{Path(run_dir) / rundir.CONFIG}: no saved normalisation "
                        "(data.normalization) to write the audio with")
    if isinstance(tempo_bpm, bool) or not isinstance(tempo_bpm, (int, float)) \
            or not 4 <= tempo_bpm <= 60_000_000:
        raise UserError(f"tempo_bpm must be a number from 4 to 60,000,000, got {tempo_bpm!r}")
    if steps is None:
        steps = -(-config.sample_rate // FRAME) if kind == "speech" else DEFAULT_STEPS[kind]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory; expected the output directory")

    originals = _prime_sequences(config, data_info, data_dir, prime, num) if prime else None
    generator = torch.Generator().manual_seed(seed)
    with kernels.threads(1):   # one step's products are too small to share between threads
        drawn, seconds = _draw(model, kind, data_info, originals, num, steps, prime, generator,
                               temperature)

    out.mkdir(parents=True, exist_ok=True)
    writer = _Writer(kind, config, data_info, out, prime, tempo_bpm)
    paths = []
    for i in range(num):
        original = originals[i] if originals else None
        paths += writer.write(f"sample-{i}", drawn[i], original, steps)
    sampled = writer.seconds(steps)
    manifest = {"run_dir": str(run_dir), "dataset": config.dataset, "kind": kind, "num": num,
                "steps": steps, "prime": prime, "temperature": float(temperature), "seed": seed,
                "test_sequences": [o.index for o in originals] if originals else [],
                "seconds": round(seconds, 4)}
    if sampled:
        manifest.update(sampled_seconds_per_sample=sampled, batch=num,
                        seconds_per_sampled_second=seconds / sampled)
        if kind == "music":
            manifest.update(tempo_bpm=tempo_bpm, steps_per_quarter=writer.steps_per_quarter)
        else:
            manifest.update(sample_rate=config.sample_rate)
    manifest["files"] = [p.name for p in paths]
    rundir.write_json(out / "samples.json", manifest)
    if log:
        timing = (f"; {seconds / sampled:.3g} s per sampled second ({num} drawn together)"
                  if sampled else "")
        log(f"{num} samples of {steps} steps in {seconds:.2f} s{timing}")
    return [*paths, out / "samples.json"]


def _draw(model, kind, data_info, originals, num, steps, prime, generator, temperature):
    """(the sequences (num, K + steps, ...), prime included, or speech (num, 20 (K + steps))
    samples; the seconds spent drawing, the teacher-forced prime left out)."""
    dtype = next(model.parameters()).dtype
    if kind == "speech":
        norm = data_info["normalization"]
        if originals:
            start = torch.stack([o.inputs[:prime].reshape(-1) for o in originals]).to(dtype)
        else:                                   # one frame of digital silence, not written
            start = torch.full((num, FRAME), -norm["mean"] / norm["std"], dtype=dtype)
        states = speech_states(model, start)
        started = time.perf_counter()
        drawn = draw_speech(model, start, steps, generator, temperature, states)
        seconds = time.perf_counter() - started
        return (drawn if originals else drawn[:, FRAME:]), seconds
    tokens = model.config.head == "categorical"
    vocab = model.config.input_size
    encode = (lambda y: F.one_hot(y, vocab).to(dtype)) if tokens else None
    x, state = torch.zeros(num, model.config.input_size, dtype=dtype), None
    if originals:
        with torch.no_grad():
            _, state = model.rnn(torch.stack([o.inputs[:prime] for o in originals]).to(dtype))
        last = torch.stack([o.targets[prime - 1] for o in originals])
        x = encode(last) if tokens else last.to(dtype)
    started = time.perf_counter()
    drawn = draw_shifted(model, x, steps, generator, temperature, state, encode)
    seconds = time.perf_counter() - started
    if originals:
        primed = torch.stack([o.targets[:prime] for o in originals]).to(drawn.dtype)
        drawn = torch.cat([primed, drawn], 1)
    return drawn, seconds


class Original(NamedTuple):
    index: int                  # in the test split
    inputs: torch.Tensor        # (T, I)
    targets: torch.Tensor       # (T, D) or (T,)


def _prime_sequences(config, data_info, data_dir, prime, num):
    """``num`` test examples at least ``prime`` steps long, in the split's order (cycled)."""
    if data_dir is not None:
        config = replace(config, data_dir=str(data_dir))
    test = load_config_data(config, data_info).examples["test"]
    long_enough = [j for j, (i, _) in enumerate(test) if len(i) >= prime]
    if not long_enough:
        longest = max(len(i) for i, _ in test)
        raise UserError(f"prime {prime} steps is longer than every test sequence of "
                        f"{config.dataset} (the longest has {longest} steps)")
    return [Original(j, *test[j]) for j in
            (long_enough[n % len(long_enough)] for n in range(num))]


def _integer(name, value, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or \
            (low is not None and value < low):
        expected = "an integer" if low is None else \
            "a positive integer" if low == 1 else f"an integer >= {low}"
        raise UserError(f"{name} must be {expected}, got {value!r}")
    return int(value)


# -- writing ---------------------------------------------------------------------------------------

class _Writer:
    """Writes one sample (and its original) in the format of the run's data."""

    def __init__(self, kind, config, data_info, out, prime, tempo_bpm):
        self.kind, self.config, self.info, self.out = kind, config, data_info, out
        self.prime, self.tempo_bpm = prime, tempo_bpm
        self.steps_per_quarter = STEPS_PER_QUARTER.get(config.dataset, config.steps_per_quarter)

    def seconds(self, steps):
        """Seconds of music or audio in ``steps`` steps (None for text and npz)."""
        if self.kind == "music":
            return steps * 60.0 / (self.tempo_bpm * self.steps_per_quarter)
        if self.kind == "speech":
            return steps * FRAME / self.config.sample_rate
        return None

    def write(self, name, drawn, original, steps):
        span = self.prime + steps
        return getattr(self, f"_{self.kind}")(name, drawn, original, span)

    def _music(self, name, roll, original, span):
        from .data.midi import write_midi
        roll = roll.round().to(torch.uint8).numpy()                      # (T, 88)
        paths = [write_midi(roll, self.out / f"{name}.mid", self.steps_per_quarter, self.tempo_bpm)]
        rolls = [("sample", roll)]
        if original is not None:
            orig = original.targets[:span].round().to(torch.uint8).numpy()
            paths.append(write_midi(orig, self.out / f"{name}-original.mid",
                                    self.steps_per_quarter, self.tempo_bpm))
            rolls.append((f"original (test sequence {original.index})", orig))
        paths.append(plot_rolls(rolls, self.prime, self.out / f"{name}.png"))
        return paths

    def _speech(self, name, drawn, original, span):
        norm, rate = self.info["normalization"], self.config.sample_rate
        paths = [write_wav(self.out / f"{name}.wav", drawn.numpy(), norm, rate)]
        if original is not None:
            # the whole test waveform, x[0 : 20T + 10]: every frame read, and the last target
            full = torch.cat([original.inputs.reshape(-1), original.targets[-1]])
            paths.append(write_wav(self.out / f"{name}-original.wav",
                                   full[:FRAME * span].numpy(), norm, rate))
        paths.append(plot_wave(unnormalise(drawn.numpy(), norm), rate, FRAME * self.prime,
                               self.out / f"{name}.png"))
        return paths

    def _text(self, name, tokens, original, span):
        vocab = self.info.get("vocab")
        if not isinstance(vocab, list):
            raise UserError(f"{self.config.dataset}: the run saved no vocabulary (data.vocab) to "
                            "decode the text with")
        decode = lambda t: "".join(vocab[int(i)] for i in t)             # noqa: E731
        paths = [self.out / f"{name}.txt"]
        rundir.write_text(paths[0], decode(tokens))
        if original is not None:
            paths.append(self.out / f"{name}-original.txt")
            rundir.write_text(paths[-1], decode(original.targets[:span]))
        return paths

    def _npz(self, name, drawn, original, span):
        def convert(a):
            if a.dtype == torch.int64:
                return a.numpy()
            norm = self.info.get("normalization")
            if norm:                                                     # real: un-normalised
                return (a.double().numpy() * np.asarray(norm["std"]) +
                        np.asarray(norm["mean"])).astype(np.float32)
            return a.round().to(torch.uint8).numpy()                     # binary
        paths = [write_npy(self.out / f"{name}.npy", convert(drawn))]
        if original is not None:
            paths.append(write_npy(self.out / f"{name}-original.npy",
                                   convert(original.targets[:span])))
        return paths


def unnormalise(x, norm):
    """Normalised samples -> amplitudes in [-1, 1) (read_wav's scale)."""
    return np.asarray(x, np.float64) * norm["std"] + norm["mean"]


def write_wav(path, normalised, norm, rate):
    """16-bit mono PCM WAV of normalised samples (N,), un-normalised with ``norm`` {mean, std}
    and clipped to int16; written atomically."""
    pcm = np.clip(np.round(unnormalise(normalised, norm) * 32768), -32768, 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(rate))
        w.writeframes(pcm.tobytes())
    rundir.write_bytes(path, buffer.getvalue())
    return path


def write_npy(path, array):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    rundir.write_bytes(path, buffer.getvalue())
    return path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    plt = _pyplot()
    fig.tight_layout()
    rundir.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path


def plot_rolls(rolls, prime, path):
    """Piano rolls [(title, (T, 88))] one above the other, notes over time, the first ``prime``
    steps shaded."""
    from .data.music import LOWEST_NOTE
    plt = _pyplot()
    fig, axes = plt.subplots(len(rolls), 1, figsize=(10, 3 * len(rolls)), squeeze=False)
    for ax, (title, roll) in zip(axes[:, 0], rolls):
        T = max(len(roll), 1)
        ax.imshow(roll.T, aspect="auto", origin="lower", cmap="Greys", interpolation="nearest",
                  extent=(0, T, LOWEST_NOTE - 0.5, LOWEST_NOTE + roll.shape[1] - 0.5))
        if prime:
            ax.axvspan(0, prime, color="tab:blue", alpha=0.15, label=f"primed ({prime} steps)")
            ax.axvline(prime, color="tab:blue", lw=1)
            ax.legend(loc="upper right")
        ax.set_xlim(0, T)
        ax.set_xlabel("step")
        ax.set_ylabel("MIDI note")
        ax.set_title(title)
    return _save(fig, path)


def plot_wave(x, rate, primed, path):
    """Waveform (top) and spectrogram (bottom) of amplitudes x (N,), the first ``primed``
    samples shaded."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    t = np.arange(len(x)) / rate
    top.plot(t, x, lw=0.5, color="black")
    top.set_ylabel("amplitude")
    top.set_ylim(-1, 1)
    nfft = min(256, max(16, len(x) // 4))
    bottom.specgram(x, NFFT=nfft, Fs=rate, noverlap=nfft // 2, cmap="magma")
    bottom.set_ylabel("frequency (Hz)")
    bottom.set_xlabel("seconds")
    for ax in (top, bottom):
        if primed:
            ax.axvspan(0, primed / rate, color="tab:blue", alpha=0.2)
            ax.axvline(primed / rate, color="tab:blue", lw=1)
    top.set_title("sample" + (f" (first {primed / rate:.3g} s primed from the test sequence)"
                              if primed else ""))
    return _save(fig, path)

