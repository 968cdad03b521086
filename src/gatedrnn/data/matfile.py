"""A small, strict reader for the MATLAB v5 .mat subset the music files use.

Why not scipy.io.loadmat: on 3,000 mutated copies of a small music .mat file it crashed the
interpreter 6 times (segmentation fault) and ran out of memory 17 times (under a 2 GiB limit:
it allocates whatever length a tag declares), and it raises a zoo of exception types. This reader checks every length against the bytes actually present, decompresses each
miCOMPRESSED element only up to the size it declares (at most MAX_ELEMENT_BYTES), and raises
one exception type, MatError, for anything it does not understand.

Supported (MAT-File Format, MathWorks, "Level 5 MAT-file"): the 128-byte header, either byte
order, miCOMPRESSED and miMATRIX elements, small data elements, and arrays of class cell,
struct, logical and the numeric classes (double, single, int8..uint64), real only. Not
supported: sparse, char, object and complex arrays, v4 and v7.3 (HDF5) files.

    read(path) -> {name: ndarray}; cells are object arrays, structs object arrays of dicts,
    all shaped as MATLAB stores them (column-major order restored).
"""
import struct
import zlib

import numpy as np

MAX_ELEMENT_BYTES = 1 << 28     # a decompressed top-level element (256 MiB); the real files need < 22 MB
MAX_DEPTH = 16                  # nesting of cells and structs

# data types (tags) -> numpy dtype characters
_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8",
          13: "u8"}
MI_MATRIX, MI_COMPRESSED = 14, 15
# array classes: 6 double, 7 single, 8..15 int8, uint8, ..., uint64
_NUMERIC = range(6, 16)
MX_CELL, MX_STRUCT = 1, 2
_LOGICAL, _COMPLEX = 0x0200, 0x0800


class MatError(ValueError):
    """The bytes are not a .mat file of the supported subset; the message says where and why."""


def read(path):
    with open(path, "rb") as f:
        data = f.read()
    return parse(data)


def parse(data: bytes):
    if len(data) < 128:
        raise MatError(f"{len(data)} bytes, shorter than the 128-byte MAT v5 header")
    if data[:4] == b"\x89HDF" or data[124:126] == b"\x00\x02" or data[124:126] == b"\x02\x00":
        raise MatError("a MAT v7.3 (HDF5) file; expected MAT v5 (save -v7)")
    order = {b"IM": "<", b"MI": ">"}.get(data[126:128])
    if order is None:
        raise MatError(f"no MAT v5 endian mark at byte 126 (found {data[126:128]!r})")
    version = struct.unpack(order + "H", data[124:126])[0]
    if version != 0x0100:
        raise MatError(f"MAT version 0x{version:04x}, expected 0x0100 (v5)")
    out = {}
    pos = 128
    while pos < len(data):
        dtype, size, body, pos = _element(data, pos, order, top=True)
        if dtype == MI_COMPRESSED:
            dtype, size, body, _ = _element(_inflate(body, order), 0, order)
        if dtype != MI_MATRIX:
            raise MatError(f"top-level element of type {dtype}, expected a matrix")
        if not body:
            continue
        name, value = _matrix(body, order, 0)
        out[name] = value
    return out


def _element(data, pos, order, top=False):
    """(type, nbytes, body, next position) of the data element at ``pos``."""
    if pos + 8 > len(data):
        raise MatError(f"truncated tag at byte {pos}")
    word, size = struct.unpack_from(order + "II", data, pos)
    if word >> 16:                                       # small data element: 4 bytes inline
        dtype, size = word & 0xFFFF, word >> 16
        if size > 4:
            raise MatError(f"small data element of {size} bytes at byte {pos}, at most 4")
        return dtype, size, data[pos + 4:pos + 4 + size], pos + 8
    dtype, start = word, pos + 8
    if size > len(data) - start:
        raise MatError(f"element at byte {pos} declares {size} bytes, {len(data) - start} remain")
    end = start + size
    if not (top and dtype == MI_COMPRESSED):             # compressed elements are not padded
        end = min(len(data), start + (size + 7) // 8 * 8)
    return dtype, size, data[start:start + size], end


def _inflate(body, order):
    """Decompress an miCOMPRESSED body: the tag, then at most the size it declares."""
    d = zlib.decompressobj()
    try:
        head = d.decompress(body, 8)
        if len(head) < 8:
            raise MatError("compressed element holds less than a tag")
        size = struct.unpack(order + "I", head[4:8])[0]
        if size > MAX_ELEMENT_BYTES:
            raise MatError(f"compressed element declares {size} bytes, more than the "
                           f"{MAX_ELEMENT_BYTES} allowed")
        rest = d.decompress(d.unconsumed_tail, size + 8)
    except zlib.error as e:
        raise MatError(f"corrupt compressed element ({e})") from None
    if len(rest) < size:
        raise MatError(f"compressed element ends after {len(rest)} of its {size} bytes")
    return head + rest


def _sub(body, pos, order, want=None, what="element"):
    dtype, size, sub, pos = _element(body, pos, order)
    if want is not None and dtype not in want:
        raise MatError(f"{what} has data type {dtype}")
    return dtype, sub, pos


def _numbers(dtype, raw, order, what):
    if dtype not in _TYPES:
        raise MatError(f"{what} has unsupported data type {dtype}")
    char = _TYPES[dtype]
    item = np.dtype(char).itemsize
    if len(raw) % item:
        raise MatError(f"{what}: {len(raw)} bytes is not a whole number of {char} values")
    return np.frombuffer(raw, np.dtype(char).newbyteorder(order))


def _matrix(body, order, depth):
    """(name, value) of an miMATRIX body."""
    if depth > MAX_DEPTH:
        raise MatError(f"cells nested deeper than {MAX_DEPTH}")
    dtype, flags, pos = _sub(body, 0, order, {6}, "array flags")
    if len(flags) < 4:
        raise MatError("array flags shorter than 4 bytes")
    word = struct.unpack_from(order + "I", flags)[0]
    cls = word & 0xFF
    dtype, dims_raw, pos = _sub(body, pos, order, {5}, "dimensions")
    dims = tuple(int(d) for d in _numbers(5, dims_raw, order, "dimensions"))
    if len(dims) < 2 or min(dims) < 0:
        raise MatError(f"dimensions {dims}, expected at least two non-negative")
    count = 1
    for d in dims:
        count *= d
    dtype, name_raw, pos = _sub(body, pos, order, {1, 2}, "array name")
    name = name_raw.decode("latin1")
    if word & _COMPLEX:
        raise MatError(f"{name or 'array'}: complex arrays are not supported")
    if cls == MX_CELL:
        return name, _cell(body, pos, order, dims, count, depth)
    if cls == MX_STRUCT:
        return name, _struct(body, pos, order, dims, count, depth)
    if cls not in _NUMERIC:
        raise MatError(f"{name or 'array'}: array class {cls} is not supported "
                       "(expected cell, struct, logical or numeric)")
    dtype, raw, pos = _sub(body, pos, order)
    values = _numbers(dtype, raw, order, name or "array")
    if values.size != count:
        raise MatError(f"{name or 'array'}: {values.size} values for dimensions {dims}")
    # kept in the type it is stored in (as scipy's loadmat does: uint8 for the music rolls)
    values = values.astype(values.dtype.newbyteorder("=")).reshape(dims, order="F")
    return name, values.astype(bool) if word & _LOGICAL else values


def _children(body, pos, order, count, depth):
    """``count`` miMATRIX elements following ``pos``."""
    if 8 * count > len(body) - pos:                      # each child needs at least 8 bytes
        raise MatError(f"{count} elements declared, only {len(body) - pos} bytes left")
    out = []
    for _ in range(count):
        dtype, sub, pos = _sub(body, pos, order, {MI_MATRIX}, "cell element")
        out.append(_matrix(sub, order, depth + 1)[1] if sub else np.zeros((0, 0)))
    return out


def _cell(body, pos, order, dims, count, depth):
    children = _children(body, pos, order, count, depth)   # checks count before allocating
    cells = np.empty(count, dtype=object)
    for i, value in enumerate(children):
        cells[i] = value                                 # one by one: never broadcast
    return cells.reshape(dims, order="F")


def _struct(body, pos, order, dims, count, depth):
    dtype, raw, pos = _sub(body, pos, order, {5}, "field name length")
    length = int(_numbers(5, raw, order, "field name length")[0]) if raw else 0
    dtype, raw, pos = _sub(body, pos, order, {1, 2}, "field names")
    if length <= 0 or len(raw) % length:
        raise MatError(f"field names of {len(raw)} bytes do not split into {length}-byte names")
    names = [raw[i:i + length].split(b"\0")[0].decode("latin1") for i in range(0, len(raw), length)]
    values = _children(body, pos, order, count * len(names), depth)
    out = np.empty(count, dtype=object)
    for i in range(count):
        out[i] = dict(zip(names, values[i * len(names):(i + 1) * len(names)]))
    return out.reshape(dims, order="F")
