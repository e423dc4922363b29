"""Training-log reading and plotting (``RUN_DIR/log.jsonl``).

Each log line is one JSON object: ``{"kind": "train", "epoch", "step", "loss", "cls_loss",
"box_loss", "lr", "images_per_s"}`` or ``{"kind": "eval", "epoch", "step", "AP", "AP50", ...}``.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from core.engine.output_paths import atomic_output

LOG_NAME = "log.jsonl"


def log_path(run_dir: str | os.PathLike) -> Path:
    """``RUN_DIR/log.jsonl``."""
    return Path(run_dir) / LOG_NAME


def read_log(path: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """Read a ``log.jsonl`` (or a run dir containing one) into ``(train_rows, eval_rows)``.

    A truncated last line (a run still writing) is skipped silently; an unreadable line
    elsewhere is skipped with a warning. Lines of other kinds are ignored.
    Raises FileNotFoundError naming the path when the log does not exist.
    """
    p = Path(path)
    if p.is_dir():
        p = p / LOG_NAME
    if not p.is_file():
        raise FileNotFoundError(f"no training log at {p}")
    lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    train: list[dict] = []
    evals: list[dict] = []
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n != len(lines) - 1:
                warnings.warn(f"{p}:{n + 1}: unreadable log line skipped")
            continue
        if not isinstance(row, dict):
            continue
        if row.get("kind") == "train":
            train.append(row)
        elif row.get("kind") == "eval":
            evals.append(row)
    return train, evals


def _column(rows: Sequence[dict], key: str) -> np.ndarray:
    """Float column of ``rows``; NaN where the key is missing or not a number."""
    out = np.full(len(rows), np.nan)
    for i, r in enumerate(rows):
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[i] = float(v)
    return out


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points, ignoring NaNs; same length as input.
    The first points average over what is available so far."""
    v = np.asarray(values, dtype=np.float64)
    window = max(1, int(window))
    finite = np.isfinite(v)
    csum = np.concatenate([[0.0], np.cumsum(np.where(finite, v, 0.0))])
    ccnt = np.concatenate([[0], np.cumsum(finite)])
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(idx - window, 0)
    cnt = ccnt[idx] - ccnt[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, (csum[idx] - csum[lo]) / np.maximum(cnt, 1), np.nan)


def _run_label(run_dir: str | os.PathLike) -> str:
    """Legend name for a run: its directory name."""
    p = Path(run_dir)
    return p.name or p.resolve().name


def plot_runs(
    run_dirs: Sequence[str | os.PathLike],
    out_png: str | os.PathLike,
    smooth: int | None = None,
) -> Path:
    """Plot one or more runs into ``out_png``: loss vs step (moving average, raw faint),
    lr vs step, and AP / AP50 (dashed) vs epoch. One colour per run, legend = run dir name.
    ``smooth`` is the moving-average window (default: about 1/25 of the run's train rows).
    Raises FileNotFoundError naming a missing ``log.jsonl``. Returns the written path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = [(_run_label(d), *read_log(log_path(d))) for d in run_dirs]
    fig, (ax_loss, ax_lr, ax_ap) = plt.subplots(1, 3, figsize=(17, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    any_eval = False
    for i, (label, train, evals) in enumerate(logs):
        color = colors[i % len(colors)]
        if train:
            steps = _column(train, "step")
            loss = _column(train, "loss")
            window = smooth or max(1, len(train) // 25)
            ax_loss.plot(steps, loss, color=color, alpha=0.2, linewidth=0.8)
            ax_loss.plot(steps, moving_average(loss, window), color=color, linewidth=1.6,
                         label=label)
            ax_lr.plot(steps, _column(train, "lr"), color=color, linewidth=1.4, label=label)
        if evals:
            any_eval = True
            epochs = _column(evals, "epoch")
            ax_ap.plot(epochs, _column(evals, "AP"), color=color, marker="o", markersize=3,
                       label=f"{label} AP")
            ax_ap.plot(epochs, _column(evals, "AP50"), color=color, marker="o", markersize=3,
                       linestyle="--", label=f"{label} AP50")
    ax_loss.set(title="loss", xlabel="step", ylabel="loss")
    ax_lr.set(title="learning rate", xlabel="step", ylabel="lr")
    ax_ap.set(title="AP (solid), AP50 (dashed)", xlabel="epoch", ylabel="AP")
    if not any_eval:
        ax_ap.text(0.5, 0.5, "no eval rows", ha="center", va="center", transform=ax_ap.transAxes)
    for ax in (ax_loss, ax_lr, ax_ap):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out_png)
    with atomic_output(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out


def text_loss_bars(run_dir: str | os.PathLike, rows: int = 20, width: int = 80) -> str:
    """Text view of a run's loss in the style of darknet's ``avgout.py``.

    The train rows are cut into ``rows`` consecutive buckets; each table line shows the last
    step of a bucket, the bucket's mean loss and a bar of '#' proportional to that mean (the
    largest mean fills the bar). The header gives the raw loss range, the last line the step
    with the lowest raw loss and a '>' bar on the same scale. Raises FileNotFoundError for a
    missing log and ValueError when the log has no finite train loss.
    """
    path = log_path(run_dir)
    train, _ = read_log(path)
    steps = _column(train, "step")
    loss = _column(train, "loss")
    keep = np.isfinite(loss)
    steps, loss = steps[keep], loss[keep]
    if len(loss) == 0:
        raise ValueError(f"no train loss in {path}")
    steps = np.where(np.isfinite(steps), steps, np.arange(len(steps)))

    prefix_w = 12 + 13 + 1  # iteration (12) + loss (13) + space
    bar_w = max(1, width - prefix_w - 1)
    buckets = np.array_split(np.arange(len(loss)), max(1, min(rows, len(loss))))
    means = [float(loss[b].mean()) for b in buckets]
    top = max(means)

    def bar_len(v: float) -> int:
        if top <= 0 or not math.isfinite(v):
            return 0
        return int(min(bar_w, max(0, round(v / top * bar_w))))

    dash = "-" * width
    head = "|  iteration         loss      bar"
    lines = [
        f"loss range: {loss.max():f} to {loss.min():f}",
        dash,
        head + " " * max(0, width - len(head) - 1) + "|",
        dash,
    ]
    for b, m in zip(buckets, means):
        bar = "#" * bar_len(m)
        lines.append(f"{int(steps[b[-1]]):>12d}{m:>13.6f} {bar:<{bar_w}}|")
    lines.append(dash)
    i_min = int(np.argmin(loss))
    lines.append(f"MIN{int(steps[i_min]):>9d}{loss[i_min]:>13.6f} "
                 + ">" * bar_len(float(loss[i_min])))
    lines.append(dash)
    return "\n".join(lines)
