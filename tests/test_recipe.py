"""The automatic recipe: fields left at "auto" are chosen from the run's length when it first starts,
printed with their reasons, saved in config.json and kept on resume; given values always win."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.config.loading import ConfigError, load_config
from core.engine.recipe import resolve_recipe
from core.engine.trainer import Trainer
from conftest import synthetic_shapes_yaml

ROOT = Path(__file__).resolve().parent.parent
AUTO = ["General.batch_image=auto", "optimizer.type=auto", "optimizer.lr=auto", "General.bn_momentum=auto", "schedule.warmup_epochs=auto",
        "dataset.scale_min=auto", "dataset.scale_max=auto"]


def chosen(config: str, train_images: int, *extra: str, world_size: int = 1) -> dict[str, object]:
    cfg = load_config(ROOT / config, list(extra))
    resolve_recipe(cfg, train_images, world_size)
    batch = cfg.General.batch_image * cfg.General.accumulate * world_size
    steps_per_epoch = train_images // batch
    return {"batch": cfg.General.batch_image, "type": cfg.optimizer.type,
            "lr": cfg.optimizer.lr * batch / cfg.optimizer.lr_batch, "bn": cfg.General.bn_momentum,
            "warmup_steps": cfg.schedule.warmup_epochs * steps_per_epoch,
            "scale": (cfg.dataset.scale_min, cfg.dataset.scale_max)}


def test_short_runs_fine_tune_and_long_runs_keep_the_paper_recipe() -> None:
    # a few dozen photos for 60 epochs: AdamW at 1e-3, fast BatchNorm statistics, narrow jitter
    short = chosen("config/effdet_lite0.py", 40, "schedule.end_epoch=60", "General.batch_image=8")
    assert short["type"] == "adamw" and short["lr"] == pytest.approx(1e-3) and short["bn"] == 0.1
    assert short["warmup_steps"] == pytest.approx(20) and short["scale"] == (0.8, 1.2)
    # EfficientDet-D0's 300 COCO epochs on 8 processes: the paper's SGD 0.01 per 16 images, momentum 0.01,
    # jitter 0.1-2.0, and EfficientDet's 8 images per process
    long = chosen("config/effdet_b0.py", 7329 * 64, world_size=8)
    assert long["batch"] == 8 and long["type"] == "sgd" and long["lr"] == pytest.approx(0.04)
    assert long["bn"] == 0.01 and long["warmup_steps"] == pytest.approx(1000, abs=1) and long["scale"] == (0.1, 2.0)
    # values an experiment or --set gives win; the rest is still chosen
    given = chosen("config/demo.py", 480, "General.bn_momentum=auto")  # demo gives AdamW 2e-3 at 8
    assert given["batch"] == 8 and given["type"] == "adamw" and given["lr"] == pytest.approx(2e-3)
    assert given["bn"] == 0.1
    assert chosen("config/effdet_lite0.py", 40, "optimizer.type=sgd", "General.batch_image=8")["lr"] == \
        pytest.approx(0.005)


def test_the_batch_follows_the_training_set() -> None:
    """8 images per process, halved to 4 while an epoch would have fewer than 16 steps: a few dozen photos
    train at 4 (twice the updates per pass), a larger set, or one shared by fewer processes, at 8."""
    assert chosen("config/effdet_lite0.py", 38)["batch"] == 4
    assert chosen("config/effdet_lite0.py", 127)["batch"] == 4  # 15 steps at 8
    assert chosen("config/effdet_lite0.py", 128)["batch"] == 8  # 16 steps at 8
    assert chosen("config/effdet_lite0.py", 128, world_size=2)["batch"] == 4
    assert chosen("config/effdet_lite0.py", 128, "General.accumulate=2")["batch"] == 4
    assert chosen("config/effdet_lite0.py", 6)["batch"] == 4  # never below 4: BatchNorm needs a few images
    assert chosen("config/effdet_lite0.py", 38, "General.batch_image=16")["batch"] == 16  # given: kept
    with pytest.raises(ConfigError, match="float or auto"):
        load_config(ROOT / "config/effdet_lite0.py", ["optimizer.lr=fast"])


def test_choices_are_printed_saved_and_kept_on_resume(tmp_path: Path, capsys) -> None:
    data = synthetic_shapes_yaml(tmp_path, 16, 4, 96, seed=3)
    common = [f"dataset.data={data}", "dataset.image_size=96", f"General.work_dir={tmp_path}", "General.name=auto",
              "General.batch_image=4", "General.loader_worker=0", "schedule.eval_every=0",
              "pretrain.backbone_weights=", "backbone.pretrained=False", *AUTO]
    Trainer(load_config(ROOT / "config/demo.py", [*common, "schedule.end_epoch=1"])).fit()
    out = capsys.readouterr().err
    assert "recipe: optimizer.type = 'adamw' (auto: 4 steps of 4 images" in out, out
    assert "weights: random init for the whole detector" in out  # said out loud, as a loaded backbone is
    saved = json.loads((tmp_path / "auto" / "config.json").read_text())
    assert saved["sections"]["optimizer"]["type"] == "adamw" and saved["sections"]["General"]["bn_momentum"] == 0.1
    assert set(saved["recipe"]) == {a.split("=")[0] for a in AUTO}
    # 3000 epochs of 4 steps would now choose SGD: the resumed run keeps its first start's AdamW
    resumed = Trainer(load_config(ROOT / "config/demo.py", [*common, "schedule.end_epoch=3000"]), resume=True)
    assert resumed.cfg.optimizer.type == "adamw" and resumed.cfg.dataset.scale_min == 0.8
    assert "recipe: optimizer.type = 'adamw' (auto, as the run's first start chose)" in capsys.readouterr().err
    resumed._lock.release()
    # without its config.json the run takes its first start's choices from its checkpoint
    (tmp_path / "auto" / "config.json").unlink()
    resumed = Trainer(load_config(ROOT / "config/demo.py", [*common, "schedule.end_epoch=3000"]), resume=True)
    assert resumed.cfg.optimizer.type == "adamw" and resumed.cfg.dataset.scale_min == 0.8
    assert "recipe: optimizer.type = 'adamw' (auto, as the run's first start chose)" in capsys.readouterr().err
    resumed._lock.release()
    fresh = load_config(ROOT / "config/demo.py", [*common, "schedule.end_epoch=3000"])
    resolve_recipe(fresh, 16)
    assert fresh.optimizer.type == "sgd"


def test_schedule_mult_scales_the_run(tmp_path: Path, capsys) -> None:
    """--set schedule.mult=2 doubles the epochs (and lr_steps, warmup) of a schedule written for mult 1."""
    data = synthetic_shapes_yaml(tmp_path, 8, 0, 96, seed=4)
    cfg = load_config(ROOT / "config/demo.py", [
        f"dataset.data={data}", "dataset.image_size=96", f"General.work_dir={tmp_path}", "General.name=mult",
        "General.batch_image=4", "General.loader_worker=0", "schedule.eval_every=0", "pretrain.backbone_weights=", "backbone.pretrained=False",
        "schedule.end_epoch=1", "schedule.warmup_epochs=0.5", "schedule.lr_steps=[1]", "schedule.mult=2"])
    trainer = Trainer(cfg)
    assert (cfg.schedule.end_epoch, cfg.schedule.lr_steps, cfg.schedule.warmup_epochs) == (2, [2], 1.0)
    trainer.fit()
    assert "schedule.mult 2: epochs 0-1 -> 0-2" in capsys.readouterr().err
    assert trainer.step == 2 * trainer.steps_per_epoch and (tmp_path / "mult" / "epoch_0002.pt").exists()
    saved = json.loads((tmp_path / "mult" / "config.json").read_text())["sections"]["schedule"]
    assert (saved["mult"], saved["end_epoch"]) == (1, 2)  # the record describes the run it trained


def test_the_starting_weights_are_named() -> None:
    from core.weights.pretrain import starting_weights

    demo = load_config(ROOT / "config/demo.py")
    assert starting_weights(demo) == (f"weights: backbone from {demo.pretrain.backbone_weights}; neck and head "
                                      "from random init")
    assert starting_weights(load_config(ROOT / "config/demo.py", ["pretrain.detector_weights=runs/a/best.pt"])) \
        .startswith("weights: the whole detector starts from runs/a/best.pt")
    assert starting_weights(load_config(ROOT / "config/effdet_b0.py")) == (
        "weights: backbone from timm's ImageNet weights for tf_efficientnet_b0 (backbone.pretrained); neck and head "
        "from random init")
    assert "random init for the whole detector (no pretrain.backbone_weights or detector_weights, backbone." \
        "pretrained False)" in starting_weights(load_config(ROOT / "config/effdet_b0.py", ["backbone.pretrained=False"]))
    assert "csp_darknet backbone 'cspdarknet53' has no ImageNet weights here" in starting_weights(
        load_config(ROOT / "config/yolov4_l.py"))
