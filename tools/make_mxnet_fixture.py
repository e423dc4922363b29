"""Regenerate tests/fixtures/mxnet_small*.params with real MXNet. NOT part of DetLab's runtime or tests.

DetLab reads and writes MXNet ``.params`` files with numpy alone (``core.weights.mxnet_ndarray``).
This script records what MXNet itself writes, so that the tests can check the reader against
MXNet's files and the writer byte for byte. It needs MXNet, which does not install next to
DetLab's numpy 2; use a separate virtualenv (Python 3.11)::

    python3.11 -m venv /tmp/mxvenv
    /tmp/mxvenv/bin/pip install mxnet==1.9.1 'numpy<1.24'
    /tmp/mxvenv/bin/python tools/make_mxnet_fixture.py

It writes (a few KB in all, committed):

* ``tests/fixtures/mxnet_small.params``: ``mx.nd.save`` of a dict of named arrays as SimpleDet /
  GluonCV checkpoints name them (``arg:`` weights, ``aux:`` BatchNorm moving statistics), with
  float32 / float64 / float16 / int32 / int64 / uint8 / int8 / bool arrays of 1 to 4 dimensions;
* ``tests/fixtures/mxnet_small_np.params``: ``npx.save`` in numpy-shape mode (V3 arrays,
  including a 0-d scalar and a zero-size array);
* ``tests/fixtures/mxnet_small.json``: the names, dtypes, shapes and values of both, for the tests.
"""
from __future__ import annotations

import json
from pathlib import Path

import mxnet as mx
import numpy as np

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def legacy_arrays() -> dict[str, np.ndarray]:
    """Deterministic arrays named like a SimpleDet checkpoint."""
    rng = np.random.RandomState(7)
    return {
        "arg:conv0_weight": rng.randn(4, 3, 3, 3).astype(np.float32),
        "arg:conv0_bias": rng.randn(4).astype(np.float32),
        "arg:bn0_gamma": rng.uniform(0.5, 1.5, 4).astype(np.float32),
        "arg:bn0_beta": rng.randn(4).astype(np.float32),
        "aux:bn0_moving_mean": rng.randn(4).astype(np.float32),
        "aux:bn0_moving_var": rng.uniform(0.5, 2.0, 4).astype(np.float32),
        "arg:fc1_weight": rng.randn(3, 5).astype(np.float64),
        "arg:cls_pred_weight": rng.randn(2, 3, 2).astype(np.float16),
        "arg:anchor_index": rng.randint(-1000, 1000, (2, 3)).astype(np.int32),
        "arg:step_count": np.array([3, 1 << 40, -5], dtype=np.int64),
        "arg:mask_uint8": rng.randint(0, 255, (3, 2, 2)).astype(np.uint8),
        "arg:offset_int8": rng.randint(-128, 127, (5,)).astype(np.int8),
        "arg:valid_bool": np.array([True, False, True]),
    }


def np_shape_arrays() -> dict[str, np.ndarray]:
    """Arrays only numpy-shape mode (V3) can hold: a scalar and a zero-size array."""
    return {
        "scalar": np.array(2.5, dtype=np.float32),
        "empty": np.zeros((2, 0), dtype=np.float32),
        "matrix": np.arange(6, dtype=np.float32).reshape(2, 3),
    }


def describe(arrays: dict[str, np.ndarray]) -> list[dict]:
    return [{"name": k, "dtype": str(v.dtype), "shape": list(v.shape), "values": v.ravel().tolist()}
            for k, v in arrays.items()]


def main() -> None:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    legacy = legacy_arrays()
    mx.nd.save(str(FIXTURES / "mxnet_small.params"),
               {k: mx.nd.array(v, dtype=v.dtype, ctx=mx.cpu()) for k, v in legacy.items()})
    np_arrays = np_shape_arrays()
    from mxnet import np as mnp, npx
    npx.set_np()
    npx.save(str(FIXTURES / "mxnet_small_np.params"), {k: mnp.array(v, dtype=v.dtype) for k, v in np_arrays.items()})
    npx.reset_np()
    info = {"generated_by": f"tools/make_mxnet_fixture.py with mxnet {mx.__version__}, numpy {np.__version__}",
            "mxnet_small.params": describe(legacy), "mxnet_small_np.params": describe(np_arrays)}
    (FIXTURES / "mxnet_small.json").write_text(json.dumps(info, indent=1) + "\n")
    for name in ("mxnet_small.params", "mxnet_small_np.params", "mxnet_small.json"):
        print(f"wrote {FIXTURES / name} ({(FIXTURES / name).stat().st_size} bytes)")


if __name__ == "__main__":
    main()
