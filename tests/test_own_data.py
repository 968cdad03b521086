"""A user's own data end to end through the `gatedrnn` command: a folder of MIDI files, .npz
arrays of every kind and layout, and a UTF-8 text, each trained on with `gatedrnn train`,
evaluated again with `gatedrnn eval` (from another directory: the run alone says how to read the
data) and, for the text, compared with `gatedrnn compare`; and the categorical head that tokens
use, against torch's cross entropy."""
import hashlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gatedrnn.data.midi import load_midi_dir, write_midi
from gatedrnn.data.text import UNK
from gatedrnn.heads import CategoricalHead

SPLITS = ("train", "valid", "test")
TINY = ("--hidden-size", 8, "--batch-size", 4, "--weight-noise", 0)   # seconds per run


def run_cli(*args, cwd=None):
    """`gatedrnn ...` in a subprocess (real exit status and streams)."""
    return subprocess.run([sys.executable, "-m", "gatedrnn.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=cwd, env=os.environ)


def one_line_error(r, message):
    """Exit status 2, one line on stderr that holds ``message``, no traceback."""
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def train(tmp_path, dataset, *args, run="run"):
    """`gatedrnn train` run from tmp_path (dataset paths relative to it); (run dir, metrics,
    config.json record, the process)."""
    r = run_cli("train", "--dataset", dataset, *TINY, *args, "--run-dir", run, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    run_dir = tmp_path / run
    return (run_dir, json.loads((run_dir / "metrics.json").read_text()),
            json.loads((run_dir / "config.json").read_text()), r)


def check_eval(run_dir, metrics):
    """`gatedrnn eval RUN_DIR`, run from another directory, prints every NLL of metrics.json
    again (and, for text, the bits per character); returns the printed {key: value}."""
    elsewhere = run_dir.parent / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    r = run_cli("eval", run_dir.resolve(), cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    printed = {}
    for line in r.stdout.splitlines():
        if "(metrics.json: " in line:
            key, value = line.split()[:2]
            printed[key] = value
            assert value == line.split("(metrics.json: ")[1].rstrip(")"), line
    keys = [k for k in metrics if k.endswith(("_nll", "_nll_per_sequence", "_bits_per_char"))]
    assert len(keys) >= 6 and set(keys) <= set(printed), (keys, r.stdout)
    for k in keys:
        assert printed[k] == f"{metrics[k]:.4f}", k
    return printed


# ---- a folder of MIDI files ----

def midi_folder(root, count):
    """``count`` files tune<i>.mid, each a different random roll of 12..27 eighth notes."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i in range(count):
        roll = (rng.random((12 + i, 88)) < 0.05).astype(np.uint8)
        roll[0, 39 + i] = 1                                  # never silent
        write_midi(roll, root / f"tune{i}.mid")
        names.append(f"tune{i}.mid")
    return names


def split_of(rel, seed=0):
    """midi.py's split rule written out: sha256("seed:rel") as a fraction, 0.8 / 0.9 cuts."""
    u = int(hashlib.sha256(f"{seed}:{rel}".encode()).hexdigest()[:16], 16) / 2 ** 64
    return "train" if u < 0.8 else "valid" if u < 0.9 else "test"


def test_midi_folder_trains_evaluates_and_skips_a_corrupt_file(tmp_path):
    names = midi_folder(tmp_path / "songs", 12)
    (tmp_path / "songs" / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01")
    (tmp_path / "songs" / "readme.txt").write_text("not MIDI, not read")
    sizes = {s: [split_of(n) for n in names].count(s) for s in SPLITS}
    assert sizes == {"train": 10, "valid": 1, "test": 1}      # these names fill every split

    run, metrics, record, r = train(tmp_path, "midi:songs", "--cell", "tanh", "--epochs", 2)
    out = (r.stdout + r.stderr).splitlines()
    skipped = [line for line in out if "broken.mid" in line]
    assert len(skipped) == 1 and "skipping" in skipped[0] and "not a readable MIDI file" in skipped[0]
    assert not any("readme.txt" in line for line in out)
    assert record["config"]["dataset"] == f"midi:{tmp_path / 'songs'}"   # absolute: eval anywhere
    midi = record["data"]["midi"]
    assert midi == load_midi_dir(tmp_path / "songs", log=lambda line: None)[1]
    assert midi["sizes"] == sizes and midi["files"] == 12 and midi["skipped"] == 1
    assert midi["digest"] == hashlib.sha256("".join(n + "\n" for n in sorted(names)).encode()).hexdigest()
    model = record["config"]["model"]
    assert (model["input_size"], model["output_size"], model["head"]) == (88, 88, "bernoulli")
    assert metrics["epochs"] == 2 and 0 < metrics["test_nll"] < 88 * math.log(2) + 5
    assert not any(k.endswith("_bits_per_char") for k in metrics)
    check_eval(run, metrics)

    midi_folder(tmp_path / "songs", 13)                      # a file more: not the run's data
    one_line_error(run_cli("eval", run), "the MIDI files differ from the run's")


def test_midi_folder_with_too_few_usable_files_is_one_line(tmp_path):
    midi_folder(tmp_path / "few", 2)
    (tmp_path / "few" / "broken.mid").write_bytes(b"not a MIDI file")
    r = run_cli("train", "--dataset", f"midi:{tmp_path / 'few'}", *TINY, "--epochs", 1,
                "--run-dir", tmp_path / "run")
    one_line_error(r, "2 usable MIDI files (1 skipped), expected at least 3")
    assert sum("broken.mid" in line for line in r.stdout.splitlines()) == 1
    assert not (tmp_path / "run" / "config.json").exists()


# ---- .npz arrays ----

def npz_splits(kind, rng):
    """{split: list of sequences} of one kind: bool (T, 3), float (T, 2) or int (T,) in 0..5."""
    def one(T):
        if kind == "binary":
            return rng.random((T, 3)) < 0.3
        if kind == "real":
            return rng.normal([5.0, -2.0], [3.0, 0.5], (T, 2)).astype(np.float32)
        return rng.integers(0, 6, T)
    return {s: [one(T) for T in lengths] for s, lengths in
            (("train", (9, 5, 7, 8)), ("valid", (6, 4)), ("test", (5, 7, 3)))}


def save_npz(path, seqs, layout):
    """Each split padded (N, T[, D]) with <split>_lengths, or concatenated (sum T[, D])."""
    arrays = {}
    for s, v in seqs.items():
        lengths = np.array([len(x) for x in v])
        if layout == "padded":
            a = np.zeros((len(v), lengths.max(), *v[0].shape[1:]), v[0].dtype)
            for i, x in enumerate(v):
                a[i, :len(x)] = x
                a[i, len(x):] = -1 if a.dtype != bool else True     # padding: never read
        else:
            a = np.concatenate(v)
        arrays[s], arrays[f"{s}_lengths"] = a, lengths
    np.savez(path, **arrays)


@pytest.mark.parametrize("layout", ["padded", "concatenated"])
@pytest.mark.parametrize("kind, head", [("binary", "bernoulli"), ("real", "gmm"),
                                        ("tokens", "categorical")])
def test_npz_of_every_kind_and_layout(tmp_path, kind, head, layout):
    seqs = npz_splits(kind, np.random.default_rng(1))
    save_npz(tmp_path / "seqs.npz", seqs, layout)
    run, metrics, record, _ = train(tmp_path, "npz:seqs.npz", "--epochs", 2, "--components", 2)
    model, data = record["config"]["model"], record["data"]
    size = {"binary": 3, "real": 2, "tokens": 6}[kind]
    assert (model["input_size"], model["output_size"], model["head"]) == (size, size, head)
    if kind == "real":                                 # training-split statistics, per dimension
        steps = np.concatenate(seqs["train"]).astype(np.float64)
        np.testing.assert_allclose(data["normalization"]["mean"], steps.mean(0), rtol=1e-6)
        np.testing.assert_allclose(data["normalization"]["std"], steps.std(0), rtol=1e-6)
    if kind == "tokens":
        assert data["vocabulary_size"] == 6
    assert metrics["epochs"] == 2 and all(math.isfinite(metrics[f"{s}_nll"]) for s in SPLITS)
    check_eval(run, metrics)

    if layout == "padded":                             # the file changes: eval says so
        seqs["test"] = seqs["test"][:2]
        save_npz(tmp_path / "seqs.npz", seqs, layout)
        one_line_error(run_cli("eval", run), "differ from the run's")


def test_npz_of_sparse_token_ids_is_one_line_not_out_of_memory(tmp_path):
    np.savez(tmp_path / "ids.npz", train=np.array([[1, 2, 10**9]]), valid=np.array([[1, 2]]),
             test=np.array([[3, 4]]))
    r = run_cli("train", "--dataset", f"npz:{tmp_path / 'ids.npz'}", *TINY, "--epochs", 1,
                "--run-dir", tmp_path / "run")
    one_line_error(r, "token ids up to 1,000,000,000; number the tokens 0..V-1 without gaps")


# ---- a text ----

def write_text(path, characters=3000, seed=0):
    """Words of a small alphabet in sentences, and in the last 5% an Ω the training part lacks."""
    rng = np.random.default_rng(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "it", "slept", "Rain", "fell"]
    text = ""
    while len(text) < characters:
        text += " ".join(rng.choice(words, rng.integers(3, 9))) + ".\n"
    text = text[:characters - 3] + "Ωx\n"
    path.write_text(text, encoding="utf-8")
    return text


def test_text_trains_in_bits_per_character_and_evaluates(tmp_path):
    text = write_text(tmp_path / "book.txt")
    run, metrics, record, _ = train(tmp_path, "text:book.txt", "--cell", "lstm", "--epochs", 2)
    vocab = record["data"]["vocab"]
    assert vocab == [UNK, *sorted(set(text[:len(text) * 90 // 100]))] and "Ω" not in vocab
    model = record["config"]["model"]
    assert (model["input_size"], model["output_size"], model["head"]) == (len(vocab),) * 2 + ("categorical",)
    assert record["config"]["dataset"] == f"text:{tmp_path / 'book.txt'}"
    for s in SPLITS:
        assert metrics[f"{s}_bits_per_char"] == pytest.approx(metrics[f"{s}_nll"] / math.log(2), rel=1e-12)
    assert metrics["test_nll"] < math.log(len(vocab)) + 0.5        # about uniform, after 2 epochs
    printed = check_eval(run, metrics)
    assert {f"{s}_bits_per_char" for s in SPLITS} <= set(printed)

    (tmp_path / "book.txt").write_text(text.replace("cat", "dog"), encoding="utf-8")
    one_line_error(run_cli("eval", run), "differ from the run's")


def test_compare_on_a_text_prints_bits_per_character(tmp_path):
    write_text(tmp_path / "book.txt")
    out = tmp_path / "cmp"
    r = run_cli("compare", "--dataset", "text:book.txt", "--cells", "tanh", "gru", "--epochs", 1,
                "--hidden-size", 8, "--out", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| dataset | unit |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert "paper train" not in columns and "paper test" not in columns   # not a paper dataset
    assert "test bits per char" in columns
    (dataset_dir,) = (out / "runs").iterdir()         # one directory per dataset, not a path
    for cell in ("tanh", "gru"):
        row = next(line for line in lines if f"| {cell} |" in line)
        cells = dict(zip(columns, (c.strip() for c in row.strip("|").split("|"))))
        metrics = json.loads((dataset_dir / cell / "paper" / "seeds" / "trial-0000" /
                              "metrics.json").read_text())
        assert cells["test bits per char"] == f"{metrics['test_bits_per_char']:.2f}"
        assert cells["test"] == f"{metrics['test_nll']:.2f}"
        assert metrics["test_bits_per_char"] == pytest.approx(metrics["test_nll"] / math.log(2))


@pytest.mark.parametrize("dataset, head, message", [
    ("text:book.txt", "bernoulli", "token targets need the categorical head"),
    ("npz:real.npz", "categorical", "the categorical head needs token targets"),
])
def test_a_head_that_does_not_fit_the_data_is_one_line(tmp_path, dataset, head, message):
    write_text(tmp_path / "book.txt")
    save_npz(tmp_path / "real.npz", npz_splits("real", np.random.default_rng(0)), "padded")
    r = run_cli("train", "--dataset", dataset, "--head", head, *TINY, "--epochs", 1,
                "--run-dir", "run", cwd=tmp_path)
    one_line_error(r, message)


# ---- the categorical head ----

def test_categorical_nll_is_cross_entropy_in_values_and_gradients():
    torch.manual_seed(0)
    head = CategoricalHead(5, 7).double()
    h = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)      # (B, T, H)
    target = torch.randint(0, 7, (3, 6))[:, 1:5]                           # (B, T), not contiguous
    nll = head.nll(head(h), target)
    assert nll.shape == (3, 4)
    logits = head.proj(h)
    want = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")   # (B, V, T) form
    by_hand = -torch.log_softmax(logits, -1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(nll, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(nll, by_hand, rtol=0, atol=1e-12)
    weights = torch.rand(3, 4, dtype=torch.float64)                        # any upstream gradient
    ours = torch.autograd.grad((nll * weights).sum(), [h, *head.parameters()])
    theirs = torch.autograd.grad((want * weights).sum(), [h, *head.parameters()])
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # d nll / d logits = softmax - onehot
    logits = logits.detach().requires_grad_()
    (g,) = torch.autograd.grad(head.nll(logits, target).sum(), logits)
    torch.testing.assert_close(g, torch.softmax(logits, -1) - F.one_hot(target, 7).double())


def test_categorical_sample_is_seeded_and_follows_the_softmax():
    torch.manual_seed(0)
    head = CategoricalHead(4, 5)
    h = torch.randn(2000, 4)                                               # (B, H)

    def draw(seed, temperature=1.0):
        return head.sample(h, torch.Generator().manual_seed(seed), temperature)

    a = draw(3)
    assert a.shape == (2000,) and a.dtype == torch.int64 and 0 <= a.min() and a.max() < 5
    assert torch.equal(a, draw(3)) and not torch.equal(a, draw(4))
    p = torch.softmax(head(h), -1).mean(0).detach()                        # (V,)
    freq = torch.stack([(torch.stack([draw(s) for s in range(10)]) == v).double().mean()
                        for v in range(5)])
    torch.testing.assert_close(freq.float(), p, rtol=0, atol=0.01)
    top2 = head(h).detach().topk(2, -1)
    clear = top2.values[:, 0] - top2.values[:, 1] > 0.02     # no near tie: 0.02 / 1e-3 = 20 nats
    cold = draw(5, temperature=1e-3)                         # then the most likely token
    assert clear.sum() > 1500 and torch.equal(cold[clear], top2.indices[clear, 0])
