"""Adding a part touches its own code, one registration and a config: a toy backbone, neck and head are
registered here (nothing in the project is edited), named by a config module, and trained; a toy
dataset format is one entry in ``core.data.formats.FORMATS``. The toy backbone and neck declare their
own options with their registration, and the config module sets them like any other field.

The head reuses the anchor-based family's loss and decoding by subclassing its task; a head with its
own loss would implement the same methods (``core.tasks.task.Task``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.tasks.anchor_task import DetectionTask
from core.config.loading import load_config
from core.engine.trainer import Trainer
from core.tasks.registry import TASKS
from symbol.builder import build_detector
from symbol.registry import BACKBONES, HEADS, NECKS
from conftest import synthetic_shapes_yaml


class ToyBackbone(nn.Module):
    """Strided 3x3 convs: maps at strides 8, 16, 32 (levels 3-5) of ``width`` channels."""

    def __init__(self, width: int):
        super().__init__()
        self.stem = nn.Sequential(*[nn.Sequential(nn.Conv2d(3 if i == 0 else width, width, 3, 2, 1), nn.ReLU())
                                    for i in range(3)])
        self.down = nn.ModuleList(nn.Sequential(nn.Conv2d(width, width, 3, 2, 1), nn.ReLU()) for _ in range(2))
        self.levels, self.channels = [3, 4, 5], [width] * 3

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        maps = [self.stem(images)]
        for down in self.down:
            maps.append(down(maps[-1]))
        return maps

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [("stem", self.stem), ("down", self.down)]


class ToyNeck(nn.Module):
    """A 1x1 conv per level to ``channels``."""

    def __init__(self, in_channels: list[int], in_levels: list[int], channels: int, kernel: int = 1):
        super().__init__()
        self.project = nn.ModuleList(nn.Conv2d(c, channels, kernel, padding=kernel // 2) for c in in_channels)
        self.levels, self.out_channels = list(in_levels), [channels] * len(in_levels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [p(f) for p, f in zip(self.project, features)]

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [("project", self.project)]


class ToyHead(nn.Module):
    """One shared 3x3 conv each for class logits (A*C) and box deltas (A*4): the anchor family's outputs."""

    def __init__(self, channels: int, num_anchors: int, num_classes: int):
        super().__init__()
        self.cls = nn.Conv2d(channels, num_anchors * num_classes, 3, padding=1)
        self.box = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        nn.init.constant_(self.cls.bias, -4.6)  # prior 0.01, as RetinaNet

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return [self.cls(f) for f in features], [self.box(f) for f in features]

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [("cls", self.cls), ("box", self.box)]


# ---------------------------------------------------------------- the registrations: one per part


class ToyBackboneOptions:
    toy_width = 16               # channels of every map


class ToyNeckOptions:
    toy_kernel = 1               # kernel of the per-level conv


@BACKBONES.register("toy_backbone", options=ToyBackboneOptions)
def build_toy_backbone(b: Any) -> ToyBackbone:
    return ToyBackbone(b.toy_width)


@NECKS.register("toy_neck", options=ToyNeckOptions)
def build_toy_neck(n: Any, in_channels: list[int], in_levels: list[int]) -> ToyNeck:
    return ToyNeck(in_channels, in_levels, n.channels, n.toy_kernel)


@HEADS.register("toy_head")
def build_toy_head(cfg: Any, in_channels: list[int], levels: list[int], num_classes: int) -> ToyHead:
    return ToyHead(in_channels[0], cfg.anchors.num_scales * len(cfg.anchors.aspect_ratios), num_classes)


@TASKS.register("toy_head")
class ToyTask(DetectionTask):
    """The toy head's task: the anchor family's loss and decoding, as is."""

    @staticmethod
    def owns_state(state: dict[str, torch.Tensor]) -> bool:
        return any(k.startswith("head.cls.") for k in state)

    @staticmethod
    def predictor_names(state: dict[str, torch.Tensor]) -> list[str]:
        return [k for k in state if k.startswith(("head.cls.", "head.box."))]


ROOT_DEMO = Path(__file__).resolve().parent.parent / "config" / "demo.py"

CONFIG = '''from config import base


class General(base.General):
    name = "toy"


class dataset(base.dataset):
    image_size = 96


class backbone(base.backbone):
    type = "toy_backbone"
    name = "toy"
    toy_width = 12


class neck(base.neck):
    type = "toy_neck"
    toy_kernel = 3
    channels = 24
    min_level = 3
    max_level = 5


class head(base.head):
    type = "toy_head"
'''


def test_a_registered_toy_backbone_neck_and_head_build_and_train(tmp_path: Path) -> None:
    config = tmp_path / "toy.py"
    config.write_text(CONFIG)
    data = synthetic_shapes_yaml(tmp_path, 8, 0, 96, seed=11)
    cfg = load_config(config, [f"dataset.data={data}", f"General.work_dir={tmp_path}", "General.batch_image=4",
                               "General.loader_worker=0", "schedule.end_epoch=1", "schedule.eval_every=0"])
    model = build_detector(cfg, 4)
    assert isinstance(model.backbone, ToyBackbone) and isinstance(model.neck, ToyNeck)
    assert isinstance(model.head, ToyHead)
    assert model.backbone.channels == [12] * 3 and model.neck.project[0].kernel_size == (3, 3)  # their own options
    assert load_config(config, ["neck.toy_kernel=5"]).neck.toy_kernel == 5  # --set reaches them too
    trainer = Trainer(cfg)
    assert isinstance(trainer.task, ToyTask)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "toy" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    after = trainer.model.state_dict()
    assert trainer.step == 2 and any(not torch.equal(before[k], after[k]) for k in before if k.startswith("head."))
    # the surgery tools ask the toy family for its predictors
    from core.weights.surgery import head_type, strip_head

    assert head_type(after) == "toy_head"
    assert sorted(name for name, _ in strip_head(after, "toy_head").removed) == sorted(
        k for k in after if k.startswith(("head.cls.", "head.box.")))


def _read_csv(split, spec, problems, decode: bool) -> list:
    """A toy format: ``annotations`` names a CSV of ``file,x1,y1,x2,y2,class`` rows (xyxy original pixels)."""
    import numpy as np
    from PIL import Image

    from core.data.records import ImageRecord

    rows: dict[str, list[list[str]]] = {}
    for line in split.annotations.read_text().splitlines()[1:]:
        name, *values = line.split(",")
        rows.setdefault(name, []).append(values)
    records = []
    for image_id, (name, boxes) in enumerate(sorted(rows.items()), start=1):
        path = split.images / name
        width, height = Image.open(path).size
        records.append(ImageRecord(image_id, str(path), width, height,
                                   np.array([[float(v) for v in b[:4]] for b in boxes], dtype=np.float32),
                                   np.array([spec.class_names.index(b[4]) for b in boxes], dtype=np.int64)))
    return records


def test_a_registered_toy_dataset_format_reads_and_trains(tmp_path: Path, monkeypatch) -> None:
    """One entry in core.data.formats.FORMATS (here set by the test) makes ``format: csv`` a dataset format."""
    from core.data.formats import FORMATS, DatasetFormat
    from core.data.spec import load_dataset_spec, read_split

    monkeypatch.setitem(FORMATS, "csv", DatasetFormat("annotations", "boxes.csv", (), "", _read_csv))
    coco = synthetic_shapes_yaml(tmp_path, 8, 0, 96, seed=12)
    shapes = read_split(load_dataset_spec(coco), "train")
    names = load_dataset_spec(coco).class_names
    lines = ["file,x1,y1,x2,y2,class"] + [
        f"{Path(r.file_name).name},{','.join(f'{v:g}' for v in box)},{names[label]}"
        for r in shapes for box, label in zip(r.boxes, r.labels)]
    (tmp_path / "boxes.csv").write_text("\n".join(lines) + "\n")
    image_dir = Path(shapes[0].file_name).parent
    (tmp_path / "csv.yaml").write_text(f"format: csv\nroot: {tmp_path}\nclasses: {names}\n"
                                       f"train: {{images: {image_dir}, annotations: boxes.csv}}\n")
    spec = load_dataset_spec(tmp_path / "csv.yaml")
    records = read_split(spec, "train")
    assert spec.category_ids == list(range(1, len(names) + 1)) and len(records) == len(shapes)
    for mine, theirs in zip(records, sorted(shapes, key=lambda r: Path(r.file_name).name)):
        assert mine.file_name == theirs.file_name and (mine.boxes == theirs.boxes).all()
    cfg = load_config(ROOT_DEMO, [
        f"dataset.data={tmp_path / 'csv.yaml'}", "dataset.image_size=96", f"General.work_dir={tmp_path}",
        "General.name=csv", "General.batch_image=4", "General.loader_worker=0", "schedule.end_epoch=1",
        "schedule.eval_every=0", "pretrain.backbone_weights=", "backbone.pretrained=False"])
    trainer = Trainer(cfg)
    trainer.fit()
    assert trainer.step == 2
