"""python -m utils.compare: one table (markdown + CSV) and one PNG over several runs, trained here (each
its own detection_train.py process, a crash or the time budget ending only that run) or read back."""
from __future__ import annotations

import csv
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import synthetic_shapes_yaml
from core.config.loading import load_config
from core.evaluation.plot import read_log
from utils import compare

ROOT = Path(__file__).resolve().parent.parent


def read_csv(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "compare.csv", newline="") as f:
        return {row["run"]: row for row in csv.DictReader(f)}


def check_png(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as im:
        assert im.size == (1400, 520)
        pixels = np.asarray(im.convert("L"))
    assert pixels.std() > 5  # something is drawn


def fake_run(folder: Path, config: str, sets: list[str], train: list[tuple[int, float]],
             evals: list[tuple[int, int, float, float]]) -> Path:
    """A finished-looking run: config.json of ``config`` + ``sets`` and a log.jsonl with train rows
    ``(step, images_per_s)`` and eval rows ``(epoch, step, AP, AP50)``."""
    folder.mkdir(parents=True)
    load_config(ROOT / config, sets).save(folder / "config.json")
    rows = [{"kind": "train", "epoch": 1, "step": s, "loss": 1.0 / s, "lr": 0.01, "images_per_s": ips}
            for s, ips in train]
    rows += [{"kind": "eval", "epoch": e, "step": s, "AP": ap, "AP50": ap50, "AP75": ap / 2} for e, s, ap, ap50 in evals]
    rows.sort(key=lambda r: (r["step"], r["kind"] == "eval"))
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_finished_runs_table_equals_their_logs(tmp_path, capsys):
    data = synthetic_shapes_yaml(tmp_path, 4, 2, 64, seed=0)
    d = f"dataset.data={data}"
    runs = [
        fake_run(tmp_path / "runs" / "small", "config/demo.py", [d, "dataset.image_size=96", "General.batch_image=4"],
                 [(5, 10.0), (10, 12.0), (15, 11.0), (20, 30.0)],
                 [(1, 10, 0.10, 0.30), (2, 20, 0.25, 0.50)]),
        # backbone.pretrained: timm ImageNet weights, which the table's network must not load (nor download)
        fake_run(tmp_path / "runs" / "yolo", "config/yolov4_r18.py", [d, "General.batch_image=2", "backbone.pretrained=True"],
                 [(4, 2.0), (8, 2.5), (12, 2.25)],
                 [(1, 4, -1.0, -1.0), (2, 8, 0.40, 0.61), (3, 12, 0.40, 0.70)]),  # AP -1: no score; tie: first
        fake_run(tmp_path / "runs" / "retina", "config/retina_r18_fpn.py", [d, "General.batch_image=8"], [(10, 5.0)], []),
    ]
    out = tmp_path / "cmp"
    assert compare.main(["--runs", *map(str, runs), "--out", str(out)]) == 0
    table = read_csv(out)
    assert list(table) == ["small", "yolo", "retina"]
    for run in runs:
        train, evals = read_log(run)
        row = table[run.name]
        assert float(row["train img/s"]) == statistics.median(r["images_per_s"] for r in train)
        batch = json.loads((run / "config.json").read_text())["sections"]["General"]["batch_image"]
        scored = [r for r in evals if r["AP"] >= 0]
        if not scored:
            assert row["best AP"] == row["step"] == row["time (s)"] == "" and row["status"] == "finished (no eval rows)"
            continue
        best = max(scored, key=lambda r: r["AP"])
        assert (float(row["best AP"]), float(row["AP50"]), int(row["step"])) == (best["AP"], best["AP50"], best["step"])
        previous, seconds = 0, 0.0  # the log's estimate: step difference x batch / images_per_s
        for r in train:
            if r["step"] <= best["step"]:
                seconds += (r["step"] - previous) * batch / r["images_per_s"]
                previous = r["step"]
        assert float(row["time (s)"]) == pytest.approx(seconds) and row["time"] == "log"
    assert table["yolo"]["step"] == "8" and table["small"]["step"] == "20"
    assert (table["small"]["time (s)"], table["yolo"]["time (s)"]) == (repr(2.0 + 5 * 4 / 12.0 + 5 * 4 / 11.0 + 5 * 4 / 30.0),
                                                                      repr(4 * 2 / 2.0 + 4 * 2 / 2.5))

    # params and GFLOPs are utils.model_summary's, with no weights loaded (here checked on the CPU)
    from symbol.builder import build_detector
    from utils.model_summary import summarize

    cfg = compare._load_run_config(runs[0])
    cfg.pretrain.backbone_weights = ""
    _, totals = summarize(build_detector(cfg, 4), 96)
    assert float(table["small"]["params (M)"]) == totals.parameters / 1e6
    assert float(table["small"]["GFLOPs"]) == pytest.approx(totals.gflops, rel=1e-9)
    assert table["yolo"]["input"] == "640" and float(table["yolo"]["GFLOPs"]) > float(table["small"]["GFLOPs"])
    assert table["yolo"]["status"] == "finished" and 36 < float(table["yolo"]["params (M)"]) < 37  # README: 36.90 at 80

    md = (out / "compare.md").read_text().splitlines()
    assert md[0].startswith("| run | config | params (M) | GFLOPs |") and len(md) == 2 + 3
    assert "| small |" in md[2] and f"| {float(table['small']['best AP']):.4f} |" in md[2]
    assert capsys.readouterr().out.splitlines() == md  # printed too
    check_png(out / "compare.png")

    # a second comparison into the same folder is refused (its table may hold measured times that --runs cannot
    # measure again); --overwrite replaces it
    written = {p.name: p.read_bytes() for p in out.iterdir()}
    assert compare.main(["--runs", *map(str, runs[:1]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "compare.md: exists" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == written
    assert compare.main(["--runs", *map(str, runs[:1]), "--out", str(out), "--overwrite"]) == 0
    assert list(read_csv(out)) == ["small"]


def test_trains_each_config_in_its_own_process_and_one_crash_does_not_end_it(tmp_path):
    """The training path, for real: a config that cannot load fails (exit 2) and the next one still
    trains (demo at 64 px, 1 epoch of 2 steps); its row is what its log says, with measured time."""
    data = synthetic_shapes_yaml(tmp_path, 8, 4, 64, seed=0)
    out, work = tmp_path / "cmp", tmp_path / "runs"
    sets = ["dataset.image_size=64", "General.batch_image=4", "General.loader_worker=0", "test.batch_image=4",
            "schedule.eval_every=1", f"General.work_dir={work}", "General.log_frequency=1"]
    args = [str(tmp_path / "broken.py"), str(ROOT / "config" / "demo.py"), "--data", str(data), "--epochs", "1",
            "--out", str(out)]
    (tmp_path / "broken.py").write_text("from config import base\n\nclass General(base.General):\n    batch_imag = 4\n")
    start = time.monotonic()
    assert compare.main(args + [a for s in sets for a in ("--set", s)]) == 0
    elapsed = time.monotonic() - start
    table = read_csv(out)
    assert table["compare_broken"]["status"].startswith("failed (exit 2")
    assert "unknown field" in (out / "train_compare_broken.txt").read_text()
    row = table["compare_demo"]
    assert row["status"] == "finished"
    run = work / "compare_demo"
    train, evals = read_log(run)
    assert len(evals) == 1 and evals[0]["step"] == 2
    assert float(row["train img/s"]) == statistics.median(r["images_per_s"] for r in train)
    assert (float(row["best AP"]), float(row["AP50"]), int(row["step"])) == (evals[0]["AP"], evals[0]["AP50"], 2)
    assert row["time"] == "measured" and 0 < float(row["time (s)"]) < elapsed
    assert row["input"] == "64" and 3.0 < float(row["params (M)"]) < 3.5  # EfficientNet-Lite0 demo, 4 classes
    assert json.loads((run / "config.json").read_text())["sections"]["schedule"]["end_epoch"] == 1
    transcript = (out / "train_compare_demo.txt").read_text()
    assert "training boxes" in transcript  # the trainer's start-up anchor check (core.tasks.anchor_fit)
    check_png(out / "compare.png")

    # the same command again: the folder holds a run now, so nothing is trained
    assert compare.main(args + [a for s in sets for a in ("--set", s)]) == 2


def test_refuses_folders_that_hold_a_run(tmp_path, capsys):
    work = tmp_path / "runs"
    (work / "compare_demo").mkdir(parents=True)
    (work / "compare_demo" / "log.jsonl").write_text("")
    argv = [str(ROOT / "config" / "demo.py"), "--set", f"General.work_dir={work}", "--out", str(tmp_path / "o")]
    assert compare.main(argv) == 2
    err = capsys.readouterr().err
    assert str(work / "compare_demo") in err and "--overwrite" in err and "--runs" in err and "nothing trained" in err
    assert not (tmp_path / "o").exists()
    cmd = compare.train_command("config/demo.py", ["General.name=exp", "General.seed=3"], "d.yaml", 2, overwrite=True)
    assert cmd[1:] == [str(ROOT / "detection_train.py"), "--config", "config/demo.py", "--data", "d.yaml",
                       "--set", "General.seed=3", "--set", "schedule.end_epoch=2", "--set", "General.name=exp_demo",
                       "--overwrite"]
    assert compare.run_name("config/yolov4_r18.py", []) == "compare_yolov4_r18"


FAKE_TRAINER = """
import json, signal, sys, time
from pathlib import Path
run = Path(sys.argv[1]); run.mkdir(parents=True, exist_ok=True)
def stop(signum, frame):
    (run / "interrupted.pt").write_text("saved")
    sys.exit(130)
signal.signal(signal.SIGTERM, stop)
with open(run / "log.jsonl", "w") as f:
    f.write(json.dumps({"kind": "train", "epoch": 1, "step": 3, "loss": 1.0, "lr": 0.1, "images_per_s": 7.0}) + "\\n")
    f.write(json.dumps({"kind": "eval", "epoch": 1, "step": 3, "AP": 0.2, "AP50": 0.4}) + "\\n")
time.sleep(60)
"""


def test_budget_stops_a_run_with_sigterm(tmp_path, monkeypatch):
    work = tmp_path / "runs"
    monkeypatch.setattr(compare, "train_command", lambda config, sets, data, epochs, overwrite: [
        sys.executable, "-c", FAKE_TRAINER, str(work / compare.run_name(config, sets))])
    out = tmp_path / "o"
    start = time.monotonic()
    assert compare.main([str(ROOT / "config" / "demo.py"), "--set", f"General.work_dir={work}",
                         "--budget-minutes", "0.05", "--out", str(out)]) == 0
    assert time.monotonic() - start < 30
    assert (work / "compare_demo" / "interrupted.pt").read_text() == "saved"  # it got SIGTERM and saved
    row = read_csv(out)["compare_demo"]
    assert row["status"] == "stopped at budget (0.05 min)"
    assert (row["best AP"], row["step"], row["time"]) == ("0.2", "3", "measured") and float(row["time (s)"]) < 3.0
