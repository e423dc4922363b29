"""``General.compile``: the torch.compile paths of training and testing give the eager results.

Inductor compiles for the CPU here, as it would for a GPU elsewhere; the graphs are the same
apart from the kernels, so this is where CI catches a model that no longer compiles.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from core.config.loading import load_config
from core.data.check import load_checked_records
from core.data.loader import build_loader
from core.data.spec import load_dataset_spec
from core.engine.inference import predict_batches
from core.engine.tester import find_weights, load_trained
from core.engine.trainer import Trainer
from conftest import synthetic_shapes_yaml

ROOT = Path(__file__).resolve().parent.parent
# A plain-conv detector shrunk in width and depth: compile time on a CPU grows with the number of
# distinct kernels, and an EfficientNet's training graph takes minutes to compile on 2 cores.
CONFIG = ROOT / "config/retina_r18_fpn.py"


def _overrides(data: Path, work_dir: Path, name: str, compile_model: bool) -> list[str]:
    return [f"dataset.data={data}", "dataset.image_size=128", f"General.work_dir={work_dir}", f"General.name={name}",
            "General.batch_image=4", "General.loader_worker=0", "General.deterministic=True",
            "General.log_frequency=1", "schedule.end_epoch=1", "schedule.eval_every=0", "test.batch_image=4",
            f"General.compile={compile_model}", "neck.channels=32", "head.repeats=1",
            "backbone.pretrained=False"]


def test_compiled_training_and_inference_match_eager(tmp_path: Path) -> None:
    data = synthetic_shapes_yaml(tmp_path, 8, 4, 128, seed=5)
    losses = {}
    for compiled in (False, True):
        name = "compiled" if compiled else "eager"
        cfg = load_config(CONFIG, _overrides(data, tmp_path, name, compiled))
        Trainer(cfg).fit()
        rows = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in rows if r["kind"] == "train"]
    assert len(losses["eager"]) == 2
    for a, b in zip(losses["eager"], losses["compiled"]):
        assert abs(a - b) <= 1e-3 * abs(a), losses

    detections = {}
    for compiled in (False, True):
        cfg = load_config(CONFIG, _overrides(data, tmp_path, "eager", compiled))
        trained = load_trained(cfg, find_weights(cfg, None, None), torch.device("cpu"))
        assert isinstance(trained.model, torch._dynamo.eval_frame.OptimizedModule) == compiled
        spec = load_dataset_spec(cfg.dataset.data)
        records = load_checked_records(spec, ("val",), False)[0]["val"]
        loader = build_loader(cfg, records, train=False, batch_size=4)
        detections[compiled] = predict_batches(trained.model, trained.task, loader, torch.device("cpu"))
    for image_id, eager in detections[False].items():
        compiled = detections[True][image_id]
        top = min(len(eager.scores), len(compiled.scores), 20)
        assert top > 0
        assert torch.allclose(eager.scores[:top], compiled.scores[:top], atol=1e-4)
        assert torch.allclose(eager.boxes[:top], compiled.boxes[:top], atol=1e-2)
