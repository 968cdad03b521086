"""Readers for a user's own data: MIDI files (data/midi.py), .npz arrays (data/arrays.py) and
UTF-8 text (data/text.py), on small files built here; expected values are written out by hand
or recomputed from the documented rules."""
import hashlib

import mido
import numpy as np
import pytest

from gatedrnn.data.arrays import load_npz
from gatedrnn.data.midi import load_midi_dir, read_midi, write_midi
from gatedrnn.data.text import UNK, load_text
from gatedrnn.errors import UserError

SPLITS = ("train", "valid", "test")


def user_error(fn, *args, match, **kwargs):
    """Call fn, expect a UserError with a one-line message containing `match`; return it."""
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert match in msg and "\n" not in msg, msg
    return msg


# ---- MIDI ----

def note(kind, pitch, channel=0, velocity=64):
    return mido.Message(kind, note=pitch, velocity=velocity, channel=channel)


def save(path, tracks, ticks_per_beat=96, type=1):
    """Tracks given as lists of (absolute tick, message) -> a MIDI file at path."""
    midi = mido.MidiFile(type=type, ticks_per_beat=ticks_per_beat)
    for events in tracks:
        track, now = mido.MidiTrack(), 0
        for tick, msg in sorted(events, key=lambda e: e[0]):
            track.append(msg.copy(time=tick - now))
            now = tick
        midi.tracks.append(track)
    midi.save(path)
    return path


def piece(path, pitch=60, ticks_per_beat=96):
    """A small type 1 file: a tempo track, a piano track with `pitch` and a drum track."""
    q = ticks_per_beat
    tempo = [(0, mido.MetaMessage("set_tempo", tempo=500000)),
             (2 * q, mido.MetaMessage("set_tempo", tempo=250000))]     # no effect on steps
    piano = [(0, note("note_on", pitch)), (q, note("note_off", pitch)),
             (q, note("note_on", 64)), (2 * q, note("note_on", 64, velocity=0))]
    drums = [(0, note("note_on", 36, channel=9)), (4 * q, note("note_off", 36, channel=9))]
    return save(path, [tempo, piano, drums], ticks_per_beat)


def roll_of(T, *notes):
    """(T, 88) roll with (first step, end step, MIDI note) marked."""
    roll = np.zeros((T, 88), np.uint8)
    for a, b, n in notes:
        roll[a:b, n - 21] = 1
    return roll


def test_read_midi_merges_tracks_drops_drums_and_out_of_range(tmp_path):
    q = 96
    tempo = [(0, mido.MetaMessage("set_tempo", tempo=500000)),
             (q, mido.MetaMessage("set_tempo", tempo=1000000))]
    piano = [(0, note("note_on", 60)), (q, note("note_off", 60)),          # steps 0, 1
             (q, note("note_on", 64)), (3 * q, note("note_on", 64, velocity=0)),  # 2..5
             (0, note("note_on", 20)), (q, note("note_off", 20)),          # below A0
             (0, note("note_on", 109)), (q, note("note_off", 109)),        # above C8
             (0, note("note_on", 21)), (q // 2, note("note_off", 21)),     # A0, step 0
             (0, note("note_on", 108)), (q // 2, note("note_off", 108))]   # C8, step 0
    strings = [(2 * q, note("note_on", 67, channel=3)), (4 * q, note("note_off", 67, channel=3))]
    drums = [(0, note("note_on", 38, channel=9)), (6 * q, note("note_off", 38, channel=9))]
    path = save(tmp_path / "a.mid", [tempo, piano, strings, drums], q)
    want = roll_of(12, (0, 2, 60), (2, 6, 64), (4, 8, 67), (0, 1, 21), (0, 1, 108))
    # T = 12: the drum track's end_of_track at 6 quarter notes keeps the silence after step 8
    got = read_midi(path)
    assert got.dtype == np.uint8 and got.shape == (12, 88)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(read_midi(path, steps_per_quarter=1), want[::2])
    np.testing.assert_array_equal(read_midi(path, steps_per_quarter=4), np.repeat(want, 2, axis=0))


def test_read_midi_rounds_to_the_nearest_step_and_keeps_short_notes(tmp_path):
    q = 480                                      # a step (eighth note) is 240 ticks
    piano = [(238, note("note_on", 60)), (481, note("note_off", 60)),   # a bit early, late
             (600, note("note_on", 62)), (610, note("note_off", 62)),   # 10 ticks: 1 step
             (721, note("note_on", 64)), (721, note("note_off", 64)),   # 0 ticks: 1 step
             (960, note("note_on", 65))]                                   # never ended
    path = save(tmp_path / "b.mid", [piano + [(1200, mido.MetaMessage("marker", text="end"))]], q)
    want = roll_of(5, (1, 2, 60), (3, 4, 62), (3, 4, 64), (4, 5, 65))
    np.testing.assert_array_equal(read_midi(path), want)


def test_read_midi_overlapping_notes_and_stray_note_offs(tmp_path):
    """A roll is the union of the notes' steps, however note_offs pair with onsets."""
    q = 2                                        # one tick per eighth-note step
    piano = [(0, note("note_on", 60)), (2, note("note_on", 60)),   # second onset while held
             (3, note("note_off", 60)), (5, note("note_off", 60)),  # ends notes 1, then 2
             (7, note("note_off", 60)),                               # nothing left: ignored
             (8, note("note_on", 62)), (8, note("note_off", 62, channel=1)),  # other channel: ignored
             (9, note("note_off", 62))]
    path = save(tmp_path / "c.mid", [piano], q)
    np.testing.assert_array_equal(read_midi(path), roll_of(9, (0, 5, 60), (8, 9, 62)))


def test_read_midi_errors_are_one_line(tmp_path):
    user_error(read_midi, tmp_path / "missing.mid", match="missing.mid: file not found")
    (tmp_path / "junk.mid").write_bytes(b"RIFF....not midi")
    user_error(read_midi, tmp_path / "junk.mid", match="junk.mid: not a readable MIDI file")
    good = piece(tmp_path / "good.mid").read_bytes()
    (tmp_path / "cut.mid").write_bytes(good[:-7])
    user_error(read_midi, tmp_path / "cut.mid", match="cut.mid: not a readable MIDI file")
    (tmp_path / "smpte.mid").write_bytes(good[:12] + b"\xe7\x28" + good[14:])  # -25 fps, 40 tpf
    user_error(read_midi, tmp_path / "smpte.mid", match="SMPTE")
    (tmp_path / "type2.mid").write_bytes(good[:8] + b"\x00\x02" + good[10:])
    user_error(read_midi, tmp_path / "type2.mid", match="type 2")
    user_error(read_midi, tmp_path / "good.mid", steps_per_quarter=0, match="steps_per_quarter")


def random_roll(rng, T):
    """Sparse random notes, held notes, a note repeated after one silent step, silence at the end."""
    roll = (rng.random((T, 88)) < 0.03).astype(np.uint8)
    roll[2:9, 40] = 1                            # held over 7 steps
    roll[2:4, 50] = 1
    roll[5:7, 50] = 1                            # repeated after a silent step
    roll[8, :] = 0                               # a silent step inside
    roll[-3:, :] = 0                             # trailing silence
    return roll


@pytest.mark.parametrize("spq", [1, 2, 3, 4, 480, 1000])
def test_midi_round_trip_is_exact(tmp_path, spq):
    rng = np.random.default_rng(spq)
    for T in (12, 40, 200):
        roll = random_roll(rng, T)
        path = write_midi(roll, tmp_path / f"r{T}.mid", steps_per_quarter=spq)
        np.testing.assert_array_equal(read_midi(path, steps_per_quarter=spq), roll)
    for roll in (np.zeros((7, 88), np.uint8), np.zeros((0, 88), np.uint8), np.ones((3, 88), bool)):
        path = write_midi(roll, tmp_path / "edge.mid", steps_per_quarter=spq)
        np.testing.assert_array_equal(read_midi(path, steps_per_quarter=spq), roll)


def test_write_midi_makes_one_note_per_run(tmp_path):
    roll = roll_of(6, (0, 3, 60), (4, 5, 60), (1, 2, 72))
    path = write_midi(roll, tmp_path / "w.mid", steps_per_quarter=2, tempo_bpm=90, velocity=100)
    midi = mido.MidiFile(path)
    assert midi.type == 0 and len(midi.tracks) == 1
    tps = midi.ticks_per_beat // 2
    events, now = [], 0
    for msg in midi.tracks[0]:
        now += msg.time
        if msg.type.startswith("note"):
            events.append((now // tps, msg.type, msg.note, msg.velocity))
        elif msg.type == "set_tempo":
            assert msg.tempo == mido.bpm2tempo(90)
    assert events == [(0, "note_on", 60, 100), (1, "note_on", 72, 100), (2, "note_off", 72, 0),
                      (3, "note_off", 60, 0), (4, "note_on", 60, 100), (5, "note_off", 60, 0)]
    assert now == 6 * tps                        # end_of_track at step T
    assert [p.name for p in tmp_path.iterdir()] == ["w.mid"]   # no temporary file left


def test_write_midi_checks_its_arguments(tmp_path):
    user_error(write_midi, np.zeros((4, 87)), tmp_path / "x.mid", match="(T, 88)")
    user_error(write_midi, np.full((4, 88), 2), tmp_path / "x.mid", match="0 and 1")
    user_error(write_midi, np.zeros((4, 88)), tmp_path / "x.mid", velocity=0, match="velocity")
    user_error(write_midi, np.zeros((4, 88)), tmp_path / "x.mid", tempo_bpm=0, match="tempo_bpm")
    user_error(write_midi, np.zeros((4, 88)), tmp_path / "no" / "x.mid", match="cannot write")
    assert not (tmp_path / "x.mid").exists()


def expected_split(rel, seed):
    u = int(hashlib.sha256(f"{seed}:{rel}".encode()).hexdigest()[:16], 16) / 2 ** 64
    return "train" if u < 0.8 else "valid" if u < 0.9 else "test"


def midi_dir(root, names):
    """One file per name, each with its own pitch so a roll tells which file it came from."""
    pitches = {}
    for i, rel in enumerate(names):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        pitches[rel] = 30 + i
        piece(root / rel, pitch=30 + i)
    return pitches


def where(splits):
    """{pitch of the file: split} from the first note of each roll."""
    return {int(np.flatnonzero(roll[0])[0]) + 21: s for s, rolls in splits.items() for roll in rolls}


def test_load_midi_dir(tmp_path):
    names = [f"set{i % 3}/piece{i}.{['mid', 'MID', 'midi', 'Midi'][i % 4]}" for i in range(24)]
    pitches = midi_dir(tmp_path, names)
    (tmp_path / "set0" / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01")
    save(tmp_path / "set1" / "silent.midi", [[(0, mido.MetaMessage("set_tempo", tempo=500000))]])
    save(tmp_path / "drums.mid", [[(0, note("note_on", 36, channel=9)),
                                   (96, note("note_off", 36, channel=9))]])
    (tmp_path / "notes.txt").write_text("not a MIDI file, not read")
    lines = []
    splits, info = load_midi_dir(tmp_path, log=lines.append)

    assert len(lines) == 3 and all("\n" not in line for line in lines)
    for name, why in (("broken.mid", "not a readable MIDI file"), ("silent.midi", "no notes"),
                      ("drums.mid", "no notes")):
        assert sum(name in line and why in line for line in lines) == 1, lines
    want = {pitches[rel]: expected_split(rel, 0) for rel in names}
    assert where(splits) == want
    sizes = {s: list(want.values()).count(s) for s in SPLITS}
    assert info == {"files": 24, "skipped": 3, "sizes": sizes, "steps_per_quarter": 2, "seed": 0,
                    "digest": hashlib.sha256("".join(r + "\n" for r in sorted(names)).encode()).hexdigest()}
    assert all(sizes[s] for s in SPLITS)
    for s in SPLITS:                              # in order of relative path, as read_midi reads them
        rels = sorted(r for r in names if want[pitches[r]] == s)
        for rel, roll in zip(rels, splits[s], strict=True):
            assert roll.dtype == np.uint8 and roll.shape[1] == 88
            np.testing.assert_array_equal(roll, read_midi(tmp_path / rel))

    # adding files moves no other file; another seed gives another split
    midi_dir(tmp_path, names + ["new/a.mid", "new/b.mid"])
    splits2, info2 = load_midi_dir(tmp_path, log=lambda line: None)
    assert info2["files"] == 26 and info2["digest"] != info["digest"]
    moved = where(splits2)
    assert all(moved[p] == s for p, s in want.items())
    other, _ = load_midi_dir(tmp_path, seed=1, log=lambda line: None)
    assert where(other) == {pitches.get(r, 30 + i): expected_split(r, 1)
                            for i, r in enumerate(names + ["new/a.mid", "new/b.mid"])}
    assert where(other) != moved


def test_load_midi_dir_errors(tmp_path):
    user_error(load_midi_dir, tmp_path / "none", match="not a directory")
    midi_dir(tmp_path, ["a.mid", "b.mid"])
    (tmp_path / "c.mid").write_bytes(b"")
    msg = user_error(load_midi_dir, tmp_path, log=lambda line: None, match="2 usable MIDI files")
    assert "1 skipped" in msg
    names = ["a.mid", "b.mid", "x.mid"]
    seed = next(s for s in range(1000) if {expected_split(r, s) for r in names} == {"train"})
    midi_dir(tmp_path, names)
    user_error(load_midi_dir, tmp_path, seed=seed, log=lambda line: None, match="3/0/0 train/valid/test")


# ---- .npz arrays ----

def test_npz_padded_binary_with_and_without_lengths(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.random((3, 5, 4)) < 0.5
    valid, test = rng.random((2, 6, 4)) < 0.5, rng.random((1, 2, 4)) < 0.5
    np.savez(tmp_path / "b.npz", train=train, train_lengths=[5, 1, 3], valid=valid, test=test)
    splits, kind = load_npz(tmp_path / "b.npz")
    assert kind == "binary"
    assert [len(s) for s in splits["train"]] == [5, 1, 3]
    np.testing.assert_array_equal(splits["train"][2], train[2, :3])
    assert [s.shape for s in splits["valid"]] == [(6, 4), (6, 4)]
    assert all(s.dtype == np.uint8 for v in splits.values() for s in v)


def test_npz_concatenated_real(tmp_path):
    rng = np.random.default_rng(1)
    seqs = {s: [rng.normal(size=(n, 3)) for n in ns]
            for s, ns in (("train", (4, 1, 7)), ("valid", (2,)), ("test", (3, 3)))}
    np.savez(tmp_path / "r.npz", **{s: np.concatenate(v) for s, v in seqs.items()},
             **{f"{s}_lengths": [len(a) for a in v] for s, v in seqs.items()})
    splits, kind = load_npz(tmp_path / "r.npz")
    assert kind == "real"
    for s in SPLITS:
        assert len(splits[s]) == len(seqs[s])
        for got, want in zip(splits[s], seqs[s]):
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, want.astype(np.float32))


def test_npz_tokens_in_both_layouts(tmp_path):
    padded = np.array([[3, 1, 4, -1], [1, 5, 9, 2]], np.int32)     # -1: padding past a length
    np.savez(tmp_path / "t.npz", train=padded, train_lengths=[3, 4],
             valid=np.array([7, 7, 0], np.uint8), valid_lengths=[1, 2], test=np.array([[2, 2]]))
    splits, kind = load_npz(tmp_path / "t.npz")
    assert kind == "tokens"
    assert [s.tolist() for s in splits["train"]] == [[3, 1, 4], [1, 5, 9, 2]]
    assert [s.tolist() for s in splits["valid"]] == [[7], [7, 0]]
    assert [s.tolist() for s in splits["test"]] == [[2, 2]]
    assert all(s.dtype == np.int64 and s.ndim == 1 for v in splits.values() for s in v)


def test_npz_nan_in_padding_is_not_data(tmp_path):
    train = np.ones((2, 3, 1))
    train[0, 2] = np.nan
    np.savez(tmp_path / "p.npz", train=train, train_lengths=[2, 3], valid=train[1:], test=train[1:])
    assert [len(s) for s in load_npz(tmp_path / "p.npz")[0]["train"]] == [2, 3]


def bad_npz(tmp_path, **arrays):
    base = {"train": np.zeros((2, 3, 2)), "valid": np.zeros((1, 3, 2)), "test": np.zeros((1, 3, 2))}
    path = tmp_path / "bad.npz"
    np.savez(path, **{**base, **arrays})
    return path


@pytest.mark.parametrize("arrays, match", [
    (dict(train=np.array([np.zeros((2, 2)), np.zeros((3, 2))], dtype=object)),
     "train is an object array"),
    (dict(valid=np.array([[[0.0, np.nan]]])), "valid holds NaN"),
    (dict(test=np.array([[[0.0, np.inf]]])), "test holds NaN or infinite"),
    (dict(test=np.zeros((1, 3, 5))), "different feature sizes D (train 2, valid 2, test 5)"),
    (dict(valid=np.zeros((1, 3, 2), bool)), "different kinds (train real, valid binary"),
    (dict(train_lengths=[3, 4]), "train_lengths holds a length of 4, longer than the 3 steps"),
    (dict(train_lengths=[3, 0]), "train_lengths holds a length of 0, expected lengths >= 1"),
    (dict(train_lengths=[3]), "train_lengths holds 1 lengths, expected 2"),
    (dict(train_lengths=[1.0, 2.0]), "train_lengths has shape (2,) and dtype float64"),
    (dict(train=np.zeros((5, 2))), "needs train_lengths"),
    (dict(train=np.zeros((5, 2)), train_lengths=[2, 2]), "train_lengths sums to 4, expected 5"),
    (dict(train=np.zeros(5)), "train has shape (5,) and dtype float64"),
    (dict(train=np.zeros((2, 3, 88), np.uint8)), "save 0/1 features as bool"),
    (dict(train=np.zeros((2, 3), "U1")), "train has dtype <U1"),
    (dict(train=np.zeros((0, 3, 2))), "expected N >= 1"),
    (dict(train_length=[3, 3]), "unexpected arrays ['train_length']"),
])
def test_npz_errors_name_the_file_and_the_key(tmp_path, arrays, match):
    assert "bad.npz" in user_error(load_npz, bad_npz(tmp_path, **arrays), match=match)


def test_npz_token_and_file_errors(tmp_path):
    np.savez(tmp_path / "neg.npz", train=np.array([[1, -2]]), valid=np.array([[1]]), test=np.array([[1]]))
    user_error(load_npz, tmp_path / "neg.npz", match="neg.npz: train holds token id -2")
    np.savez(tmp_path / "some.npz", train=np.zeros((1, 1, 1)))
    user_error(load_npz, tmp_path / "some.npz", match="missing valid, test")
    np.save(tmp_path / "one.npy", np.zeros(3))
    user_error(load_npz, tmp_path / "one.npy", match="one.npy: holds a single array (.npy)")
    np.save(tmp_path / "obj.npy", np.array([None]), allow_pickle=True)
    user_error(load_npz, tmp_path / "obj.npy", match="obj.npy: holds pickled data")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really")
    user_error(load_npz, tmp_path / "junk.npz", match="junk.npz: not a readable .npz file")
    user_error(load_npz, tmp_path / "missing.npz", match="missing.npz: no such file")


# ---- text ----

def test_load_text_splits_vocabulary_and_unknowns(tmp_path):
    text = "ab cab ba" * 20 + "abcé€ab  z" + "cab😀x cab😀"              # 180 + 10 + 10
    assert len(text) == 200
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    splits, vocab = load_text(tmp_path / "t.txt", chunk_length=64)
    assert vocab == [UNK, " ", "a", "b", "c"] and UNK == "\ufffd"
    assert [len(s) for s in splits["train"]] == [64, 64, 52]
    assert [len(s) for s in splits["valid"]] == [10] and [len(s) for s in splits["test"]] == [10]
    assert splits["valid"][0].tolist() == [2, 3, 4, 0, 0, 2, 3, 1, 1, 0]
    decode = lambda seqs: "".join(vocab[i] for s in seqs for i in s.tolist())
    assert decode(splits["train"]) == text[:180]
    assert decode(splits["test"]) == "cab\ufffd\ufffd cab\ufffd"   # 😀 and x are not in training
    assert all(s.dtype == np.int64 for v in splits.values() for s in v)
    splits100, _ = load_text(tmp_path / "t.txt")
    assert [len(s) for s in splits100["train"]] == [100, 80]


def test_load_text_bom_and_replacement_character(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeff".encode() + ("a\ufffdb" * 10).encode())
    splits, vocab = load_text(path)
    assert vocab == [UNK, "a", "b"]
    assert splits["train"][0].tolist()[:4] == [1, 0, 2, 1]


def test_load_text_errors(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("café au lait, crème brûlée".encode("latin-1"))
    user_error(load_text, tmp_path / "latin1.txt", match="latin1.txt: not UTF-8 text (byte 0xe9 at offset 3)")
    (tmp_path / "empty.txt").write_bytes(b"")
    user_error(load_text, tmp_path / "empty.txt", match="empty.txt: empty")
    (tmp_path / "short.txt").write_text("x" * 19)
    user_error(load_text, tmp_path / "short.txt", match="short.txt: 19 characters, expected at least 20")
    (tmp_path / "ok.txt").write_text("x" * 20)
    assert [sum(map(len, v)) for v in load_text(tmp_path / "ok.txt")[0].values()] == [18, 1, 1]
    user_error(load_text, tmp_path / "ok.txt", chunk_length=0, match="chunk_length")
    user_error(load_text, tmp_path / "nope.txt", match="nope.txt: file not found")


@pytest.mark.parametrize("reader", ["midi", "wav", "text"])
def test_every_user_file_reader_names_a_missing_file_or_a_directory(tmp_path, reader):
    from gatedrnn.data.speech import read_wav
    read = {"midi": read_midi, "wav": read_wav, "text": load_text}[reader]
    user_error(read, tmp_path / f"missing.{reader}", match=f"missing.{reader}: file not found")
    folder = tmp_path / f"folder.{reader}"
    folder.mkdir()
    user_error(read, folder, match=f"folder.{reader}: cannot read (IsADirectoryError")
