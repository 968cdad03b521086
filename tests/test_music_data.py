"""Music loaders: the real files against shared/data/README.md, then small generated files."""
import hashlib
import json
import os
import pickle
import shlex
import shutil

import numpy as np
import pytest
import scipy.io

from gatedrnn.data.music import KEYS, LOWEST_NOTE, load_music, read_mat, read_pickle, validate
from gatedrnn.data.sources import MUSIC
from gatedrnn.errors import UserError

# shared/data/README.md, "Verification": per split (train, valid, test).
README = {
    "jsb": dict(steps=(13807, 4602, 4725), notes=((43, 96), (48, 96), (45, 96)),
                empty=(18, 29, 17), max_chord=4, train_len=(25, 129),
                sha256="d0dbd7d154b46b4c1cf099ff907ccbd258d6bedfa3d4f71e6ea285211c10c865"),
    "nottingham": dict(steps=(176561, 45513, 44463), notes=((31, 93), (34, 91), (36, 89)),
                       empty=(487, 51, 19), max_chord=9, train_len=(40, 1788),
                       sha256="fcb3743b008e334d8ecd5fc8b67cce02ba9be9ba9ffb1316a99e3913b9b81d14"),
    "musedata": dict(steps=(245202, 82755, 64339), notes=((21, 96), (21, 100), (21, 105)),
                     empty=(12962, 4412, 5042), max_chord=15, train_len=(9, 3457),
                     sha256="e483bf48ebf8bc874505be2f03d2f05e262f740f5be40ce6cd1486f8f64e3db3"),
    "pianomidi": dict(steps=(75911, 8540, 19036), notes=((21, 108), (24, 104), (21, 108)),
                      empty=(4917, 251, 652), max_chord=12, train_len=(111, 3857),
                      sha256="3b908aec45f02b6e39aa5c8deee3d116de5caf969ee013aa08f0c333a0b31ecc"),
}
SPLITS = ("train", "valid", "test")


def note_lists(roll):
    """(T, 88) roll -> T ascending lists of MIDI notes (the pickle layout)."""
    rows, cols = np.nonzero(roll)  # row-major order: columns ascend within a row
    notes = (cols + LOWEST_NOTE).tolist()
    ends = np.cumsum(np.bincount(rows, minlength=len(roll))).tolist()
    return [notes[s:e] for s, e in zip([0] + ends[:-1], ends)]


def write_mat(path, splits):
    """Save splits in the Gan et al. layout: <split>data = 1 x N cell array of T x 88 matrices."""
    out = {}
    for split, seqs in splits.items():
        cells = np.empty((1, len(seqs)), dtype=object)
        for i, a in enumerate(seqs):
            cells[0, i] = a
        out[split + "data"] = cells
    scipy.io.savemat(path, out)


def write_pickle(path, obj, protocol=2):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def user_error(fn, *args, match):
    """Call fn, expect UserError with a one-line message containing `match`; return the message."""
    with pytest.raises(UserError) as info:
        fn(*args)
    msg = str(info.value)
    assert match in msg and "\n" not in msg, msg
    return msg


# ---- the real files ----

@pytest.fixture(scope="module", params=list(MUSIC))
def real(request, polyphonic_dir):
    return request.param, load_music(request.param, polyphonic_dir)


def test_real_split_sizes_steps_and_notes(real):
    name, splits = real
    want = README[name]
    assert tuple(len(splits[s]) for s in SPLITS) == MUSIC[name].sizes
    assert tuple(sum(len(a) for a in splits[s]) for s in SPLITS) == want["steps"]
    for split, (lo, hi) in zip(SPLITS, want["notes"]):
        used = np.flatnonzero(np.concatenate(splits[split]).any(axis=0)) + LOWEST_NOTE
        assert (used.min(), used.max()) == (lo, hi), split
    assert tuple(sum(int((a.sum(1) == 0).sum()) for a in splits[s]) for s in SPLITS) == want["empty"]
    assert max(int(a.sum(1).max()) for s in SPLITS for a in splits[s]) == want["max_chord"]
    lengths = [len(a) for a in splits["train"]]
    assert (min(lengths), max(lengths)) == want["train_len"]
    assert all(a.dtype == np.uint8 and a.shape[1] == KEYS for s in SPLITS for a in splits[s])


def test_real_content_digest(real):
    """README recipe: json of ascending note lists per step, sorted keys, compact separators."""
    name, splits = real
    obj = {s: [note_lists(a) for a in splits[s]] for s in SPLITS}
    text = json.dumps(obj, separators=(",", ":"), sort_keys=True)
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == README[name]["sha256"]


def test_env_data_dir(polyphonic_dir, monkeypatch):
    monkeypatch.setenv("GATEDRNN_DATA_DIR", str(polyphonic_dir))
    assert [len(v) for v in load_music("jsb").values()] == [229, 76, 77]


def test_explicit_data_dir_beats_env(polyphonic_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("GATEDRNN_DATA_DIR", str(tmp_path / "nowhere"))
    assert len(load_music("jsb", polyphonic_dir)["test"]) == 77
    user_error(load_music, "jsb", match="GATEDRNN_DATA_DIR")


def test_original_pickle_matches_mat(polyphonic_dir, tmp_path):
    """The real JSB rolls written back as an original-format pickle load to the same arrays."""
    mat = load_music("jsb", polyphonic_dir)
    write_pickle(tmp_path / "JSB Chorales.pickle", {s: [note_lists(a) for a in mat[s]] for s in SPLITS})
    from_pickle = load_music("jsb", tmp_path)
    for s in SPLITS:
        assert len(from_pickle[s]) == len(mat[s])
        assert all(np.array_equal(a, b) for a, b in zip(from_pickle[s], mat[s]))


def test_mat_preferred_over_pickle(polyphonic_dir, tmp_path):
    shutil.copy(polyphonic_dir / "JSB_Chorales.mat", tmp_path)
    (tmp_path / "JSB Chorales.pickle").write_bytes(b"not a pickle")
    assert len(load_music("jsb", tmp_path)["train"]) == 229


@pytest.mark.parametrize("corrupt", ["truncated", "random", "empty"])
def test_corrupt_mat(polyphonic_dir, tmp_path, corrupt):
    data = {"truncated": (polyphonic_dir / "JSB_Chorales.mat").read_bytes()[:1000],
            "random": np.random.default_rng(0).bytes(5000), "empty": b""}[corrupt]
    (tmp_path / "JSB_Chorales.mat").write_bytes(data)
    user_error(load_music, "jsb", tmp_path, match="JSB_Chorales.mat: not a readable MATLAB .mat file")


# ---- generated pickles ----

TINY = {"train": [[[60, 64], [], [21, 108]]], "valid": [[[22.0], (50, 50)]], "test": [([70],)]}


def tiny_rolls():
    train = np.zeros((3, KEYS), np.uint8)
    train[0, [39, 43]] = 1  # 60, 64; step 1 is silence
    train[2, [0, 87]] = 1   # 21, 108
    valid = np.zeros((2, KEYS), np.uint8)
    valid[0, 1] = valid[1, 29] = 1  # 22 (a whole float), 50 twice
    test = np.zeros((1, KEYS), np.uint8)
    test[0, 49] = 1  # 70
    return {"train": [train], "valid": [valid], "test": [test]}


def assert_same(got, want):
    assert list(got) == list(want)
    for s in want:
        assert len(got[s]) == len(want[s])
        for a, b in zip(got[s], want[s]):
            assert a.dtype == np.uint8 and np.array_equal(a, b)


def test_read_pickle_builds_piano_roll(tmp_path):
    assert_same(read_pickle(write_pickle(tmp_path / "t.pickle", TINY)), tiny_rolls())


def py2_cpickle(x):
    """Protocol-2 bytes as Python 2's cPickle writes them: str as SHORT_BINSTRING, small ints as BININT1."""
    if isinstance(x, str):
        return b"U" + bytes([len(x)]) + x.encode("latin1")
    if isinstance(x, int):
        return b"K" + bytes([x])
    if isinstance(x, list):
        return b"]" + (b"(" + b"".join(map(py2_cpickle, x)) + b"e" if x else b"")
    return b"}(" + b"".join(py2_cpickle(k) + py2_cpickle(v) for k, v in x.items()) + b"u"


def test_read_python2_and_bytes_keys(tmp_path):
    lists = {"train": [[[60, 64], [], [21, 108]]], "valid": [[[22], [50]]], "test": [[[70]]]}
    py2 = tmp_path / "py2.pickle"
    py2.write_bytes(b"\x80\x02" + py2_cpickle(lists) + b".")
    assert_same(read_pickle(py2), tiny_rolls())
    as_bytes = write_pickle(tmp_path / "b.pickle", {k.encode(): v for k, v in lists.items()}, protocol=3)
    assert_same(read_pickle(as_bytes), tiny_rolls())


class Payload:
    def __init__(self, call, arg):
        self.call, self.arg = call, arg

    def __reduce__(self):
        return self.call, (self.arg,)


@pytest.mark.parametrize("call", ["system", "eval"])
def test_pickle_with_code_is_refused(tmp_path, call):
    marker = tmp_path / "pwned"
    payload = (Payload(os.system, f"touch {shlex.quote(str(marker))}") if call == "system"
               else Payload(eval, f"open({str(marker)!r}, 'w').write('x')"))
    path = write_pickle(tmp_path / "evil.pickle", {"train": [[[60]], payload], "valid": [], "test": []})
    msg = user_error(read_pickle, path, match="refusing to load")
    assert f".{call}" in msg and "evil.pickle" in msg
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # control: the payload is live under a plain unpickler
    assert marker.exists()


def good():
    return {"train": [[[60], []]], "valid": [[[61]]], "test": [[[62]]]}


def edit(change):
    obj = good()
    change(obj)
    return obj


@pytest.mark.parametrize("obj, match", [
    (edit(lambda d: d["train"][0].append([20])), "train[0][2] holds note 20, outside MIDI 21..108"),
    (edit(lambda d: d["valid"][0][0].append(109)), "valid[0][0] holds note 109, outside MIDI 21..108"),
    (edit(lambda d: d["train"][0][1].append("60")), "train[0][1] holds a str, expected MIDI note numbers"),
    (edit(lambda d: d["train"][0][1].append(True)), "train[0][1] holds a bool"),
    (edit(lambda d: d["train"][0][1].append(60.5)), "train[0][1] holds a float"),
    (edit(lambda d: d["train"][0][1].append(None)), "train[0][1] holds a NoneType"),
    (edit(lambda d: d["train"][0].append(60)), "train[0][2] is an int, expected a list of MIDI note numbers"),
    (edit(lambda d: d["test"].append(5)), "test[1] is an int, expected a list of time steps"),
    (edit(lambda d: d.update(valid={"a": 1})), "valid is a dict, expected a list of sequences"),
    (edit(lambda d: d.pop("test")), "holds keys ['train', 'valid'], expected train, valid, test"),
    (edit(lambda d: d.update(extra=[])), "holds keys ['extra', 'test', 'train', 'valid']"),
    ([[[60]]], "holds a list, expected a dict with keys train, valid, test"),
])
def test_bad_pickle_contents(tmp_path, obj, match):
    path = write_pickle(tmp_path / "JSB Chorales.pickle", obj)
    assert "JSB Chorales.pickle: " in user_error(read_pickle, path, match=match)


@pytest.mark.parametrize("data", [pickle.dumps(TINY, protocol=2)[:-9], b"\x80\x02garbage", b""])
def test_corrupt_pickle(tmp_path, data):
    (tmp_path / "x.pickle").write_bytes(data)
    user_error(read_pickle, tmp_path / "x.pickle", match="x.pickle: not a readable pickle")


def test_pickle_sizes_checked_by_load_music(tmp_path):
    write_pickle(tmp_path / "JSB Chorales.pickle", good())
    user_error(load_music, "jsb", tmp_path, match="found 1/1/1 train/valid/test sequences, expected 229/76/77")


def test_empty_sequence_in_pickle(tmp_path):
    write_pickle(tmp_path / "JSB Chorales.pickle", edit(lambda d: d["test"].append([])))
    user_error(load_music, "jsb", tmp_path, match="test[1] has shape (0, 88), expected (T, 88) with T > 0")


# ---- generated .mat files ----

def random_splits(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return {s: [(rng.random((t, KEYS)) < 0.05).astype(np.uint8) for t in rng.integers(1, 30, n)]
            for s, n in zip(SPLITS, sizes)}


def test_generated_mat_round_trips(polyphonic_dir, tmp_path):
    splits = random_splits((3, 2, 2))
    splits["train"][0] = splits["train"][0][:1]  # a single step stays 2-D
    write_mat(tmp_path / "g.mat", splits)
    raw, real = scipy.io.loadmat(tmp_path / "g.mat"), scipy.io.loadmat(polyphonic_dir / "JSB_Chorales.mat")
    for key in ("traindata", "validdata", "testdata"):  # same layout as the published files
        assert raw[key].dtype == real[key].dtype == object and raw[key].shape[0] == real[key].shape[0] == 1
    assert_same(read_mat(tmp_path / "g.mat"), splits)


def test_generated_mat_loads_by_name(tmp_path):
    splits = random_splits(MUSIC["pianomidi"].sizes, seed=1)
    write_mat(tmp_path / "Piano_midi.mat", splits)
    assert_same(load_music("pianomidi", tmp_path), splits)


def test_wrong_split_sizes(tmp_path):
    write_mat(tmp_path / "Nottingham.mat", random_splits((694, 173, 169)))
    user_error(load_music, "nottingham", tmp_path,
               match="Nottingham.mat: found 694/173/169 train/valid/test sequences, expected 694/173/170")


@pytest.mark.parametrize("change, match", [
    (lambda d: d.pop("test"), "testdata holds nothing, expected a 1 x N cell array"),
    (lambda d: d["valid"].__setitem__(1, np.zeros((4, 87), np.uint8)), "valid[1] has shape (4, 87)"),
    (lambda d: d["train"][0].__setitem__((0, 0), 2), "train[0] holds values other than 0 and 1"),
])
def test_bad_mat_contents(tmp_path, change, match):
    splits = random_splits((2, 2, 2))
    change(splits)
    write_mat(tmp_path / "b.mat", splits)
    user_error(read_mat, tmp_path / "b.mat", match=match)


# ---- names and directories ----

def test_unknown_name():
    user_error(load_music, "bach", match="unknown music dataset 'bach'; expected one of jsb, nottingham, musedata, pianomidi")


def test_missing_or_empty_data_dir(tmp_path):
    user_error(load_music, "jsb", tmp_path / "nowhere", match="nowhere is not a directory")
    (tmp_path / "file").write_text("x")
    user_error(load_music, "jsb", tmp_path / "file", match="is not a directory")
    user_error(load_music, "musedata", tmp_path, match="holds neither MuseData.mat nor MuseData.pickle")


@pytest.mark.parametrize("seq, match", [
    (np.zeros(88, np.uint8), "has shape (88,)"),
    (np.zeros((0, 88), np.uint8), "has shape (0, 88)"),
    (np.full((2, 88), 0.5), "holds values other than 0 and 1"),
    ([[0] * 88], "holds a list, expected a T x 88 array"),
])
def test_validate_sequences(seq, match):
    splits = {"train": [np.zeros((2, 88), np.uint8), seq], "valid": [np.ones((1, 88))], "test": [np.ones((1, 88))]}
    user_error(validate, splits, "f.mat", match=f"f.mat: train[1] {match}")


def test_validate_splits():
    ok = np.zeros((1, 88), np.uint8)
    validate({"train": [ok], "valid": [ok], "test": [ok]}, "f.mat", (1, 1, 1))
    user_error(validate, {"train": [ok], "valid": [], "test": [ok]}, "f.mat", match="split valid is empty")
    user_error(validate, {"train": [ok], "valid": [ok]}, "f.mat", match="found splits ['train', 'valid']")


@pytest.mark.parametrize("read", [read_mat, read_pickle])
def test_missing_file(tmp_path, read):
    user_error(read, tmp_path / "gone", match="gone: no such file")
