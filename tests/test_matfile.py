"""The strict MAT v5 reader against scipy.io (the trusted writer and reader of the format)."""
import io

import numpy as np
import pytest
import scipy.io

from gatedrnn.data import matfile


def saved(obj, compress):
    buf = io.BytesIO()
    scipy.io.savemat(buf, obj, do_compression=compress)
    return buf.getvalue()


def assert_same(ours, theirs):
    if isinstance(theirs, np.ndarray) and theirs.dtype.names:          # a scipy struct array
        assert ours.shape == theirs.shape and ours.dtype == object
        for o, t in zip(ours.ravel(order="F"), theirs.ravel(order="F")):
            assert list(o) == list(theirs.dtype.names)
            for name in theirs.dtype.names:
                assert_same(o[name], t[name])
    elif isinstance(theirs, np.ndarray) and theirs.dtype == object:
        assert ours.shape == theirs.shape and ours.dtype == object
        for o, t in zip(ours.ravel(order="F"), theirs.ravel(order="F")):
            assert_same(o, t)
    else:
        if ours.dtype == bool:                   # logical arrays: scipy gives uint8, we give bool
            assert theirs.dtype == np.uint8
            theirs = theirs.astype(bool)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("compress", [False, True])
def test_reads_what_scipy_reads(compress):
    rng = np.random.default_rng(0)
    cells = np.empty((1, 3), dtype=object)
    cells[0, 0] = (rng.random((4, 88)) < 0.1).astype(np.uint8)
    cells[0, 1] = np.ones((1, 88), np.uint8)                      # one step stays 2-D
    cells[0, 2] = np.zeros((2, 88), np.uint8)
    nested = np.empty((2, 1), dtype=object)
    nested[0, 0], nested[1, 0] = np.arange(6.0).reshape(2, 3), cells
    obj = {"traindata": cells, "nested": nested, "logical": np.array([[True, False, True]]),
           "int16": np.arange(-3, 3, dtype=np.int16).reshape(3, 2), "single": np.float32([[1.5]]),
           "uint64": np.uint64([[2**63 + 1]]), "empty": np.zeros((0, 4)),
           "record": {"a": np.eye(2), "bb": np.ones((1, 3), bool)}}
    data = saved(obj, compress)
    ours = matfile.parse(data)
    theirs = scipy.io.loadmat(io.BytesIO(data))
    assert set(ours) == {k for k in theirs if not k.startswith("__")}
    for key in ours:
        assert_same(ours[key], theirs[key])


@pytest.mark.parametrize("obj, match", [
    ({"text": "a string"}, "array class 4 is not supported"),
    ({"z": np.array([[1 + 2j]])}, "complex arrays are not supported"),
])
def test_unsupported_arrays_are_refused(obj, match):
    with pytest.raises(matfile.MatError, match=match):
        matfile.parse(saved(obj, False))


def test_a_header_alone_is_an_empty_file_and_nesting_is_bounded():
    data = saved({"x": np.ones((1, 1))}, False)
    assert matfile.parse(data[:128]) == {}
    inner = np.ones((1, 1))
    for _ in range(matfile.MAX_DEPTH + 2):
        cell = np.empty((1, 1), dtype=object)
        cell[0, 0] = inner
        inner = cell
    with pytest.raises(matfile.MatError, match="nested deeper than"):
        matfile.parse(saved({"deep": inner}, False))
