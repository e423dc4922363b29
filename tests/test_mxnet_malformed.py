"""A malformed MXNet ``.params`` file gives ``MXNetFormatError`` naming the file and the byte offset:
never another exception, an unbounded loop or an allocation larger than the file. The tools that
read weights turn it into their one-line error."""
from __future__ import annotations

import signal
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

from core.weights import mxnet_ndarray
from core.weights.mxnet_ndarray import MXNetFormatError, read_ndarray_file
from core.weights.weights_file import WeightsFileError, read_weights
from core.weights.pretrain import load_backbone_weights, load_detector_weights
from utils import param_surgery

FIXTURES = Path(__file__).resolve().parent / "fixtures"
VALID = (FIXTURES / "mxnet_small.params").read_bytes()
VALID_NP = (FIXTURES / "mxnet_small_np.params").read_bytes()
# mxnet_small.params: 24-byte list header (magic, reserved, count 13); array #0 from byte 24: V2 magic,
# storage type, ndim 4 at byte 32, dims at 36..68, context, type flag at 76, 432 bytes of float32 data.
COUNT_AT, NDIM_AT, DIMS_AT = 16, 32, 36


class Hang(Exception):
    pass


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`Hang` in the test (main thread) if the block runs longer than ``seconds``."""
    def alarm(signum, frame):
        raise Hang(f"still reading after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _patched(offset: int, fmt: str, *values) -> bytes:
    data = bytearray(VALID)
    struct.pack_into(fmt, data, offset, *values)
    return bytes(data)


def _looping_file() -> bytes:
    """Count 2^62 and an array whose data size is -40 bytes: a reader that trusts it moves back to the
    array's own start and reads it again and again."""
    header = struct.pack("<QQQ", mxnet_ndarray.LIST_MAGIC, 0, 1 << 62)
    array = (struct.pack("<Iii", mxnet_ndarray.V2_MAGIC, 0, 2) + struct.pack("<2q", -1, 40)
             + struct.pack("<iii", 1, 0, 3))  # dims (-1, 40) of uint8: -40 bytes of data
    assert len(array) == 40
    return header + array + struct.pack("<Q", 0)


def _bad_name() -> bytes:
    data = bytearray(VALID)
    data[-1] = 0xFF  # the last name's last byte: no longer UTF-8
    return bytes(data)


MALFORMED = {
    "negative dim": (_patched(DIMS_AT, "<q", -4), DIMS_AT),
    "huge dim": (_patched(DIMS_AT, "<q", 1 << 62), DIMS_AT),
    "dims whose product overflows int64": (_patched(DIMS_AT, "<4q", 1 << 32, 1 << 32, 1, 1), DIMS_AT),
    "dims larger than the file": (_patched(DIMS_AT, "<q", 1000), DIMS_AT),
    "negative ndim (V2)": (_patched(NDIM_AT, "<i", -7), NDIM_AT),
    "implausible ndim": (_patched(NDIM_AT, "<i", 1 << 30), NDIM_AT),
    "count larger than the file could hold": (_patched(COUNT_AT, "<Q", 1 << 62), COUNT_AT),
    "count 2^62 with a backwards array": (_looping_file(), COUNT_AT),
    "name not UTF-8": (_bad_name(), None),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_mxnet_malformed_dims_and_counts_raise_format_error(tmp_path: Path, case: str) -> None:
    data, offset = MALFORMED[case]
    path = tmp_path / "bad.params"
    path.write_bytes(data)
    with time_limit(5.0), pytest.raises(MXNetFormatError) as info:
        read_ndarray_file(path)
    message = str(info.value)
    assert str(path) in message and "byte " in message, message
    if offset is not None:
        assert f"byte {offset}" in message, message


def test_weight_tools_report_a_malformed_mxnet_file_in_one_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.params"
    path.write_bytes(_looping_file())
    with time_limit(5.0):
        with pytest.raises(WeightsFileError, match=r"bad\.params.*byte \d+"):
            read_weights(path)
        with pytest.raises(WeightsFileError, match=r"bad\.params.*byte \d+"):
            load_detector_weights(nn.Module(), str(path))
        model = nn.Module()
        model.backbone = nn.Module()
        model.backbone.body = nn.Linear(1, 1)
        with pytest.raises(WeightsFileError, match=r"bad\.params.*byte \d+"):
            load_backbone_weights(model, str(path))
        assert param_surgery.main([str(path), str(tmp_path / "out.pt"), "--from", "mxnet"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and "bad.params" in err[0] and "byte " in err[0], err
    assert not (tmp_path / "out.pt").exists()


# ----------------------------------------------------------------------------- property: random mutations

INTERESTING = [0, 1, 2, 3, 4, 7, 8, 13, 32, 33, 64, 255, 1000, len(VALID), -1, -2, -8, -40, 2 ** 31 - 1, -2 ** 31,
               2 ** 32 - 1, 2 ** 32, 2 ** 62, 2 ** 63 - 1, -2 ** 63, 2 ** 64 - 1,
               mxnet_ndarray.V1_MAGIC, mxnet_ndarray.V2_MAGIC, mxnet_ndarray.V3_MAGIC, mxnet_ndarray.LIST_MAGIC]


def _mutation(size_hint: int):
    position = st.integers(0, size_hint + 8)
    word = st.one_of(st.sampled_from(INTERESTING), st.integers(-2 ** 63, 2 ** 64 - 1))
    return st.one_of(
        st.tuples(st.just("byte"), position, st.integers(0, 255)),
        st.tuples(st.just("word"), position, st.sampled_from([4, 8]), word),
        st.tuples(st.just("cut"), position, st.just(0)),
        st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), position, st.integers(1, 16)),
    )


def _apply(data: bytes, mutations: list[tuple]) -> bytes:
    out = bytearray(data)
    for kind, pos, *rest in mutations:
        pos = min(pos, len(out))
        if kind == "byte":
            if pos < len(out):
                out[pos] = rest[0]
        elif kind == "word":
            size, value = rest
            out[pos:pos + size] = (value % (1 << (8 * size))).to_bytes(size, "little")
        elif kind == "cut":
            del out[pos:]
        elif kind == "insert":
            out[pos:pos] = rest[0]
        else:
            del out[pos:pos + rest[0]]
    return bytes(out)


_WORKDIR = Path(tempfile.mkdtemp(prefix="mxnet_fuzz_"))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=st.sampled_from(["legacy", "numpy-shape"]), mutations=st.lists(_mutation(len(VALID)), min_size=1,
                                                                             max_size=4))
def test_mxnet_reader_on_random_mutations_gives_arrays_or_format_error(source: str, mutations: list[tuple]) -> None:
    data = _apply(VALID if source == "legacy" else VALID_NP, mutations)
    path = _WORKDIR / "mutated.params"
    path.write_bytes(data)
    try:
        with time_limit(2.0):
            arrays = read_ndarray_file(path)
    except MXNetFormatError as err:
        assert str(path) in str(err) and "byte " in str(err), str(err)
        return
    assert all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in arrays.items())
    assert sum(v.nbytes for v in arrays.values()) <= len(data)  # nothing larger than the file
