"""MXNet's NDArray list file (``.params``, what ``mx.nd.save`` writes), read and written with numpy.

Layout (little-endian), as in MXNet's ``src/ndarray/ndarray.cc``::

    uint64 0x112                       list magic (kMXAPINDArrayListMagic)
    uint64 0                           reserved
    uint64 N                           number of arrays, then N arrays:
        uint32 magic                   0xF993FAC9 (V2, legacy shapes) or 0xF993FACA (V3, numpy shapes)
        int32  storage type            0 = dense (1 row_sparse, 2 csr: not supported here)
        int32  ndim, int64 dims[ndim]  V2: ndim 0 means "no array"; V3: ndim -1 means unknown, 0 a scalar
        int32  dev_type, int32 dev_id  context the array was saved from (1, 0 = cpu(0))
        int32  type flag               mshadow dtype (0 float32, 1 float64, 2 float16, 3 uint8, 4 int32,
                                       5 int8, 6 int64, 7 bool, 8 int16, 9 uint16, 10 uint32, 11 uint64)
        bytes  data                    prod(dims) * itemsize, C order
    uint64 K                           number of names (0 for a list, else N), then K names:
        uint64 length, bytes           UTF-8

Older files whose arrays start with 0xF993FAC8 (V1: int64 shape, no storage type) or directly with
``ndim`` (uint32 dims) are read too. :func:`write_ndarray_file` writes dense V2 arrays on ``cpu(0)``,
byte-for-byte what ``mx.nd.save(path, {name: array})`` writes for the same dict.
"""
from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

from core.engine.output_paths import atomic_output

LIST_MAGIC = 0x112
V1_MAGIC = 0xF993FAC8
V2_MAGIC = 0xF993FAC9
V3_MAGIC = 0xF993FACA

DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"), 1: np.dtype("<f8"), 2: np.dtype("<f2"), 3: np.dtype("u1"), 4: np.dtype("<i4"),
    5: np.dtype("i1"), 6: np.dtype("<i8"), 7: np.dtype("?"), 8: np.dtype("<i2"), 9: np.dtype("<u2"),
    10: np.dtype("<u4"), 11: np.dtype("<u8"),
}


class MXNetFormatError(ValueError):
    """A ``.params`` file is not a valid NDArray list, or an array cannot be stored in one."""


def is_ndarray_file(path: str | Path) -> bool:
    """Whether ``path`` starts with MXNet's NDArray list magic (0x112, then a zero reserved word)."""
    with open(path, "rb") as f:
        head = f.read(16)
    return len(head) == 16 and struct.unpack("<QQ", head) == (LIST_MAGIC, 0)


MAX_NDIM = 32            # numpy 1's limit, which MXNet 1.x shares; more is not a real array
MIN_ARRAY_BYTES = 20     # the smallest array record (pre-V1: ndim, one uint32 dim, context, type flag)


class _Reader:
    """A cursor over the file's bytes that only moves forwards and never reads past the end."""

    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def error(self, message: str, at: int | None = None) -> MXNetFormatError:
        return MXNetFormatError(f"{self.path}: at byte {self.pos if at is None else at}: {message}")

    def take(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        if size > self.left:
            raise MXNetFormatError(f"{self.path}: truncated at byte {self.pos} (needs {size} more bytes); "
                                   "the file is incomplete, save it again")
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values

    def raw(self, size: int) -> memoryview:
        if size < 0:
            raise self.error(f"negative length {size}; the file is corrupt")
        if size > self.left:
            raise MXNetFormatError(f"{self.path}: truncated at byte {self.pos} (array data needs {size} bytes, "
                                   f"{self.left} left); the file is incomplete, save it again")
        out = memoryview(self.data)[self.pos:self.pos + size]  # no copy: the caller copies what it keeps
        self.pos += size
        return out


def _check_ndim(r: _Reader, ndim: int, dim_size: int, where: str, at: int) -> None:
    if ndim > MAX_NDIM or ndim * dim_size > r.left:
        raise MXNetFormatError(f"{where}: ndim {ndim} at byte {at} is implausible (at most {MAX_NDIM}, and no more "
                               f"dimensions than the {r.left} bytes left can hold); the file is corrupt")


def _read_shape(r: _Reader, ndim: int, fmt: str, where: str) -> tuple[tuple[int, ...], int]:
    """``(shape, byte offset of its first dimension)``; every dimension checked to be plausible."""
    at = r.pos
    shape = r.take(f"<{ndim}{fmt}") if ndim else ()
    if any(d < 0 for d in shape):
        raise MXNetFormatError(f"{where}: negative dimension in shape {shape} at byte {at}; the file is corrupt")
    # No dimension of a real array is larger than the file (a zero-size array's other dims included).
    if any(d > len(r.data) for d in shape):
        raise MXNetFormatError(f"{where}: shape {shape} at byte {at} has a dimension larger than the whole file "
                               f"({len(r.data)} bytes); the file is corrupt")
    return shape, at


def _read_array(r: _Reader, index: int) -> np.ndarray:
    start = r.pos
    (magic,) = r.take("<I")
    where = f"{r.path}: array #{index} at byte {start}"
    if magic in (V2_MAGIC, V3_MAGIC):
        (stype,) = r.take("<i")
        if stype != 0:
            raise MXNetFormatError(f"{where} has sparse storage type {stype}; only dense arrays are supported: "
                                   "convert with .tostype('default') before mx.nd.save")
        at = r.pos
        (ndim,) = r.take("<i")
        if ndim < 0 or (ndim == 0 and magic == V2_MAGIC):
            raise MXNetFormatError(f"{where} is an uninitialised NDArray (no shape: ndim {ndim} at byte {at}); "
                                   "remove it before saving")
        _check_ndim(r, ndim, 8, where, at)
        shape, shape_at = _read_shape(r, ndim, "q", where)
    elif magic == V1_MAGIC:
        at = r.pos
        (ndim,) = r.take("<I")
        _check_ndim(r, ndim, 8, where, at)
        shape, shape_at = _read_shape(r, ndim, "q", where)
        if ndim == 0:
            raise MXNetFormatError(f"{where} is an uninitialised NDArray (no shape); remove it before saving")
    else:  # pre-V1: the word read is ndim, dims are uint32
        ndim = magic
        if ndim > MAX_NDIM:
            raise MXNetFormatError(f"{where}: unknown NDArray magic 0x{magic:08X}; not an MXNet .params file")
        shape, shape_at = _read_shape(r, ndim, "I", where)
        if ndim == 0:
            raise MXNetFormatError(f"{where} is an uninitialised NDArray (no shape); remove it before saving")
    r.take("<ii")  # context: dev_type, dev_id (arrays are always read to the CPU)
    at = r.pos
    (flag,) = r.take("<i")
    if flag not in DTYPES:
        raise MXNetFormatError(f"{where}: unsupported mshadow type flag {flag} at byte {at} (known: "
                               f"{sorted(DTYPES)}); cast the array to float32 before saving")
    dtype = DTYPES[flag]
    size = math.prod(shape) * dtype.itemsize  # Python ints: no int64 overflow
    if size > r.left:
        raise MXNetFormatError(f"{where}: shape {shape} at byte {shape_at} of {dtype} needs {size} bytes of data, "
                               f"only {r.left} are left after byte {r.pos}; the file is truncated or corrupt")
    data = np.frombuffer(r.raw(size), dtype=dtype)
    try:
        return data.reshape(shape).copy()
    except ValueError as err:  # e.g. a zero-size array whose other dimensions multiply past numpy's limit
        raise MXNetFormatError(f"{where}: shape {shape} at byte {shape_at} is not a valid numpy shape ({err}); "
                               "the file is corrupt") from None


def read_ndarray_file(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an MXNet ``.params`` file by name, in file order.

    Names are as stored (SimpleDet / GluonCV files: ``arg:conv0_weight``, ``aux:bn0_moving_mean``);
    a file saved from a list (no names) gives ``"0"``, ``"1"``, ... Arrays keep their dtype and
    shape (``[out, in, kh, kw]`` for convolution weights, the same order as PyTorch).

    Any malformed content (truncation, negative or oversized dimensions, counts or lengths the
    file cannot hold, bad names) raises :class:`MXNetFormatError` naming the file and the byte
    offset; the reader only moves forwards and never allocates more than the file's size.
    """
    path = Path(path)
    r = _Reader(path.read_bytes(), path)
    magic, _reserved = r.take("<QQ")
    if magic != LIST_MAGIC:
        raise MXNetFormatError(f"{path}: not an MXNet NDArray file (magic 0x{magic:X} at byte 0, expected 0x112)")
    at = r.pos
    (count,) = r.take("<Q")
    if count > max(r.left - 8, 0) // MIN_ARRAY_BYTES:  # each array takes >= 20 bytes, the name count 8
        raise r.error(f"array count {count} is more than the {r.left} bytes left could hold; the file is corrupt", at)
    arrays = [_read_array(r, i) for i in range(count)]
    at = r.pos
    (num_names,) = r.take("<Q")
    if num_names not in (0, count):
        raise r.error(f"{num_names} names for {count} arrays; the file is corrupt", at)
    names, names_at = [], r.pos
    for i in range(num_names):
        at = r.pos
        (length,) = r.take("<Q")
        if length > r.left:
            raise r.error(f"name #{i} claims {length} bytes, {r.left} are left; the file is truncated or corrupt", at)
        try:
            names.append(bytes(r.raw(length)).decode("utf-8"))
        except UnicodeDecodeError as err:
            raise r.error(f"name #{i} is not UTF-8 ({err.reason} at its byte {err.start}); the file is corrupt",
                          at) from None
    if r.pos != len(r.data):
        raise r.error(f"{len(r.data) - r.pos} unexpected bytes after the names; the file is corrupt")
    if not names:
        names = [str(i) for i in range(count)]
    seen: set[str] = set()
    duplicate = next((n for n in names if n in seen or seen.add(n)), None)
    if duplicate is not None:
        raise MXNetFormatError(f"{path}: duplicate array name {duplicate!r} (names from byte {names_at}); "
                               "the file is corrupt")
    return dict(zip(names, arrays))


def encode_ndarray_file(arrays: dict[str, np.ndarray]) -> bytes:
    """The bytes :func:`write_ndarray_file` writes: dense V2 arrays, context ``cpu(0)``, named."""
    parts = [struct.pack("<QQQ", LIST_MAGIC, 0, len(arrays))]
    for name, array in arrays.items():
        a = np.asarray(array)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        flag = next((f for f, dt in DTYPES.items() if dt == a.dtype), None)
        if flag is None:
            raise MXNetFormatError(f"array '{name}' has dtype {a.dtype}, which MXNet cannot store; cast it to "
                                   "float32 (or another of: " + ", ".join(str(d) for d in DTYPES.values()) + ")")
        if a.ndim == 0:
            raise MXNetFormatError(f"array '{name}' is 0-dimensional; MXNet's V2 format has no scalars "
                                   "(ndim 0 means 'no array'): reshape it to (1,) or leave it out")
        parts.append(struct.pack("<Iii", V2_MAGIC, 0, a.ndim))
        parts.append(struct.pack(f"<{a.ndim}q", *a.shape))
        parts.append(struct.pack("<iii", 1, 0, flag))
        parts.append(np.ascontiguousarray(a).tobytes(order="C"))
    parts.append(struct.pack("<Q", len(arrays)))
    for name in arrays:
        encoded = name.encode("utf-8")
        parts.append(struct.pack("<Q", len(encoded)) + encoded)
    return b"".join(parts)


def write_ndarray_file(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` (name -> numpy array, in this order) as ``mx.nd.save(path, arrays)`` would,
    via a temporary file renamed into place."""
    data = encode_ndarray_file(arrays)
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
