"""Config values that cannot work are one clear line each, before any heavy work starts."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.config.loading import ConfigError, load_config
from core.config.checks import check_values

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "config").glob("*.py") if p.stem != "__init__"))
def test_every_shipped_config_passes(config: str) -> None:
    check_values(load_config(ROOT / "config" / config))


@pytest.mark.parametrize("override, field", [
    ("optimizer.lr=-0.1", "optimizer.lr"),
    ("backbone.name=tf_efficientnet_b9", "backbone.name"),
    ("neck.type=bifpnn", "neck.type"),
    ("schedule.end_epoch=0", "schedule.end_epoch"),
    ("test.nms_thresh=1.5", "test.nms_thresh"),
    ("dataset.scale_min=3.0", "dataset.scale_max"),
    ("General.batch_image=0", "General.batch_image"),
    ("General.precision='bf15'", "General.precision"),
])
def test_bad_values_name_their_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        check_values(load_config(ROOT / "config" / "demo.py", [override]))


def test_cli_says_one_line_and_exits_2() -> None:
    proc = subprocess.run([sys.executable, "detection_train.py", "--config", "config/demo.py", "--set",
                           "backbone.name=tf_efficientnet_b9", "--set", "General.work_dir=/nonexistent/never"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "backbone.name" in lines[0] and "did you mean tf_efficientnet_b8" in lines[0]


@pytest.mark.parametrize("body, message", [
    ("class Neck(base.neck):\n    channels = 8\n", "class 'Neck' extends section 'neck' under another name"),
    ("class schedul(base.schedule):\n    end_epoch = 3\n", "name it 'schedule'"),
    ("class neck:\n    channels = 8\n", "class 'neck' is not a config section"),
    ("class anchors(base.anchors):\n    aspect_ratios = [[1.0, 'wide']]\n", "must be list of list of float"),
])
def test_sections_under_other_names_and_list_elements_are_errors(tmp_path: Path, body: str, message: str) -> None:
    """A misspelt section class was silently ignored (its fields never applied), like a list of the wrong
    elements; both now stop the load naming the class or field."""
    module = tmp_path / "mine.py"
    module.write_text("from config import base\n\n" + body)
    with pytest.raises(ConfigError, match=message):
        load_config(module)


def test_list_overrides_are_checked_element_by_element() -> None:
    with pytest.raises(ConfigError, match="must be list of int"):
        load_config(ROOT / "config/demo.py", ["backbone.out_levels=[3, 4.5]"])
    assert load_config(ROOT / "config/demo.py", ["dataset.mean=[0, 0.5, 1]"]).dataset.mean == [0, 0.5, 1]
