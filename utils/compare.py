"""Compare experiments: train several configs on the same data with the same budget, or read finished runs,
and write one table (markdown + CSV) and one PNG.

    python -m utils.compare config/yolov4_effb0.py config/yolov4_r18.py --data D.yaml [--set S.f=v ...]
                            [--epochs N | --budget-minutes M] [--out DIR] [--overwrite]
    python -m utils.compare --runs runs/a runs/b [--out DIR] [--overwrite]

Each config is trained by its own ``detection_train.py`` subprocess (a crash ends that run, not the
comparison) with the same ``--data`` and ``--set`` overrides, into ``General.work_dir/compare_<config stem>``
(with ``--set General.name=NAME``: ``NAME_<config stem>``). ``--epochs N`` sets ``schedule.end_epoch``;
``--budget-minutes M`` stops each run with SIGTERM after M minutes of wall-clock time (the trainer saves
``interrupted.pt``). A run folder that already holds a run is refused before anything is trained, unless
``--overwrite`` (passed on to ``detection_train.py``, which then starts that run afresh). Training output
goes to ``DIR/train_<run>.txt``. The files of an earlier comparison in ``DIR`` are refused the same way,
before anything is trained: they are replaced only with ``--overwrite``.

Per run the table gives: parameters (M) and GFLOPs at the config's input size (``utils.model_summary``,
the network built on the meta device: no weights, pretrained or not, are loaded), the median of the log's
``images_per_s``, the best AP (the largest ``AP`` of the log's eval rows) with that evaluation's AP50, step
and time. The time is wall-clock seconds from the start of the ``detection_train.py`` process to the
moment the eval row appeared in the log (measured while training here), or for ``--runs`` an estimate from
the log: the training steps' time, ``step difference x General.batch_image / images_per_s`` summed over the
train rows up to that step (evaluations and start-up left out; one process assumed). The ``time`` column
says which (``measured`` / ``log``). Writes ``DIR/compare.md``, ``DIR/compare.csv`` and ``DIR/compare.png``
(AP and AP50 curves of all runs against time, or step with ``--x step``, and best AP against GFLOPs).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.engine.output_paths import OutputPathError, atomic_output, refuse_existing  # noqa: E402 (after sys.path)

RUN_MARKERS = ("log.jsonl", "epoch_*.pt", "interrupted.pt")  # a folder holding one of these holds a run
GRACE_S = 300.0  # after the budget's SIGTERM, how long a run may take to save before it is killed
POLL_S = 0.5  # how often the log is read while a run trains


@dataclass
class RunSummary:
    """One row of the comparison. Numbers are None where the run does not have them."""

    name: str
    run_dir: Path
    config: str = ""
    status: str = "finished"
    params_m: float | None = None
    gflops: float | None = None
    image_size: int | None = None
    images_per_s: float | None = None
    best_ap: float | None = None
    best_ap50: float | None = None
    best_step: int | None = None
    best_epoch: int | None = None
    best_time_s: float | None = None
    time_source: str = ""
    evals: list[dict[str, Any]] = field(default_factory=list)  # eval rows with "time_s" added where known
    note: str = ""


# ------------------------------------------------------------------------------------ reading runs
def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _load_run_config(run_dir: Path) -> Any:
    """The run's resolved config from ``config.json`` (fields declared since get their defaults)."""
    from core.config.loading import config_from_dict

    saved = json.loads((run_dir / "config.json").read_text())
    return config_from_dict(saved.get("sections", {}), source=str(saved.get("source", run_dir / "config.json")))


def _num_classes(cfg: Any, run_dir: Path | None) -> tuple[int, str]:
    """Foreground classes of the run: from its dataset YAML, else from its newest checkpoint, else 80."""
    from core.data.spec import load_dataset_spec

    try:
        return load_dataset_spec(cfg.dataset.data).num_classes, ""
    except Exception:  # noqa: BLE001 - a run read back may have lost its data; the checkpoint knows too
        pass
    if run_dir is not None:
        try:
            from core.engine.checkpoint import load_latest

            found = load_latest(run_dir, warn=lambda _: None)
            if found is not None and found[0].get("class_names"):
                return len(found[0]["class_names"]), ""
        except Exception:  # noqa: BLE001
            pass
    return 80, "80 classes assumed (dataset and checkpoints not readable)"


def model_cost(cfg: Any, num_classes: int) -> tuple[float, float]:
    """``(parameters in millions, GFLOPs for one image at dataset.image_size)`` of ``cfg``'s network,
    from ``utils.model_summary.summarize`` on the meta device (nothing is computed or loaded)."""
    import torch

    from symbol.builder import build_detector
    from utils.model_summary import summarize

    with torch.device("meta"):
        model = build_detector(cfg, num_classes)
    _, totals = summarize(model, int(cfg.dataset.image_size))
    return totals.parameters / 1e6, totals.gflops


def train_seconds(train_rows: Sequence[dict[str, Any]], batch_image: int) -> list[tuple[int, float]]:
    """``(step, seconds of training steps up to it)`` per train row, from the log alone:
    ``(step - previous step) x batch_image / images_per_s`` summed (one process assumed)."""
    out, total, previous = [], 0.0, 0
    for row in train_rows:
        step, ips = _number(row.get("step")), _number(row.get("images_per_s"))
        if step is None:
            continue
        if ips and ips > 0:
            total += (step - previous) * batch_image / ips
        previous = int(step)
        out.append((int(step), total))
    return out


def summarize_run(run_dir: str | Path, eval_times: dict[int, float] | None = None, status: str = "finished",
                  name: str | None = None, config: str = "") -> RunSummary:
    """Everything the table says about one run folder (``config.json`` and ``log.jsonl``).
    ``eval_times`` maps an eval row's step to measured seconds since the run started; without it the
    times are estimated from the log (:func:`train_seconds`)."""
    from core.config.loading import is_auto
    from core.evaluation.plot import read_log

    run_dir = Path(run_dir)
    summary = RunSummary(name or run_dir.name, run_dir, config=config, status=status)
    cfg = None
    if (run_dir / "config.json").is_file():
        cfg = _load_run_config(run_dir)
        summary.config = summary.config or cfg.source
        summary.image_size = int(cfg.dataset.image_size)
        try:
            classes, note = _num_classes(cfg, run_dir)
            summary.params_m, summary.gflops = model_cost(cfg, classes)
            summary.note = note
        except Exception as err:  # noqa: BLE001 - a config that no longer builds still has a log to report
            summary.note = f"network not built: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
    try:
        train, evals = read_log(run_dir)
    except FileNotFoundError:
        summary.note = "; ".join(n for n in (summary.note, "no log.jsonl") if n)
        return summary
    speeds = [v for v in (_number(r.get("images_per_s")) for r in train) if v is not None]
    summary.images_per_s = statistics.median(speeds) if speeds else None
    resolved = cfg is not None and not is_auto(cfg.General.batch_image)  # a trainer's config.json has it resolved
    estimated = train_seconds(train, int(cfg.General.batch_image)) if resolved else []
    for row in evals:
        step = int(row.get("step", 0))
        row = dict(row)
        if eval_times is not None:
            row["time_s"] = eval_times.get(step)
        else:
            before = [t for s, t in estimated if s <= step]
            row["time_s"] = before[-1] if before else None
        summary.evals.append(row)
    summary.time_source = "measured" if eval_times is not None else "log"
    if not evals:
        summary.note = "; ".join(n for n in (summary.note, "no eval rows") if n)
    scored = [r for r in summary.evals if _number(r.get("AP")) is not None and r["AP"] >= 0]
    if scored:
        best = max(scored, key=lambda r: r["AP"])  # the first of equal bests: reached soonest
        summary.best_ap, summary.best_ap50 = float(best["AP"]), _number(best.get("AP50"))
        summary.best_step, summary.best_epoch = int(best["step"]), best.get("epoch")
        summary.best_time_s = best.get("time_s")
    return summary


# ---------------------------------------------------------------------------------------- training
def run_name(config: str | Path, sets: Sequence[str]) -> str:
    """``compare_<config stem>``, or ``NAME_<config stem>`` when ``sets`` hold ``General.name=NAME``."""
    stem = Path(config).stem
    names = [s.split("=", 1)[1].strip() for s in sets if s.split("=", 1)[0].strip() == "General.name"]
    return f"{names[-1]}_{stem}" if names and names[-1] else f"compare_{stem}"


def run_folder(config: str | Path, sets: Sequence[str], data: str | None) -> Path:
    """Where ``detection_train.py`` will write the run of ``config`` (its General.work_dir / run_name)."""
    from core.config.loading import load_config

    cfg = load_config(config, [s for s in sets if not s.startswith("General.name=")])
    return Path(cfg.General.work_dir) / run_name(config, sets)


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` already holds a run's log or checkpoints."""
    return folder.is_dir() and any(next(folder.glob(p), None) is not None for p in RUN_MARKERS)


def train_command(config: str | Path, sets: Sequence[str], data: str | None, epochs: int | None,
                  overwrite: bool) -> list[str]:
    """The ``detection_train.py`` command line of one config's run."""
    cmd = [sys.executable, str(ROOT / "detection_train.py"), "--config", str(config)]
    if data:
        cmd += ["--data", str(data)]
    for s in sets:
        if not s.split("=", 1)[0].strip() == "General.name":
            cmd += ["--set", s]
    if epochs is not None:
        cmd += ["--set", f"schedule.end_epoch={epochs}"]
    cmd += ["--set", f"General.name={run_name(config, sets)}"]
    if overwrite:
        cmd.append("--overwrite")
    return cmd


class _LogTail:
    """The eval rows appended to a growing ``log.jsonl`` since the last call (complete lines only; the
    trainer rewriting the file shorter, as it does when a run starts, starts the reading over)."""

    def __init__(self, log: Path):
        self.log, self.offset, self.seen = log, 0, set()

    def new_evals(self) -> list[dict[str, Any]]:
        try:
            size = self.log.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.offset:
            self.offset = 0
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next call
        self.offset += end
        rows = []
        for line in data[:end].decode("utf-8", "replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and row.get("kind") == "eval" and row.get("step") not in self.seen:
                self.seen.add(row.get("step"))
                rows.append(row)
        return rows


def run_training(cmd: list[str], folder: Path, transcript: Path, budget_s: float | None,
                 say: Callable[[str], None], grace_s: float = GRACE_S) -> tuple[dict[int, float], str]:
    """Run ``cmd`` (output to ``transcript``), reading ``folder/log.jsonl`` as it grows; after
    ``budget_s`` seconds send SIGTERM (SIGKILL after ``grace_s`` more). Returns the seconds since the
    start at which each eval row (by step) appeared, and the run's status."""
    times: dict[int, float] = {}
    tail = _LogTail(folder / "log.jsonl")
    stopped = False
    transcript.parent.mkdir(parents=True, exist_ok=True)
    with open(transcript, "w") as out:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            while True:
                rc = proc.poll()
                now = time.monotonic() - start
                for row in tail.new_evals():
                    times[row["step"]] = now
                    ap = _number(row.get("AP"))
                    say(f"  {folder.name}: epoch {row.get('epoch')} step {row['step']}: AP "
                        f"{ap if ap is None else round(ap, 4)} after {now:.0f} s")
                if rc is not None:
                    break
                if budget_s is not None and not stopped and now >= budget_s:
                    say(f"  {folder.name}: budget of {budget_s / 60:g} min reached, SIGTERM (the run saves interrupted.pt)")
                    proc.send_signal(signal.SIGTERM)
                    stopped = True
                if stopped and now >= budget_s + grace_s:
                    say(f"  {folder.name}: not stopped {grace_s:.0f} s after SIGTERM; killed")
                    proc.kill()
                time.sleep(POLL_S)
        except KeyboardInterrupt:  # Ctrl-C in a terminal reaches the run too; a second one would stop it unsaved
            time.sleep(2.0)
            if proc.poll() is None and "received" not in transcript.read_text(errors="replace")[-2000:]:
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    if stopped:
        return times, f"stopped at budget ({budget_s / 60:g} min)"
    if rc == 0:
        return times, "finished"
    return times, f"failed (exit {rc}; see {transcript})"


# ------------------------------------------------------------------------------------------ output
COLUMNS = ["run", "config", "params (M)", "GFLOPs", "input", "train img/s", "best AP", "AP50", "step",
           "time (s)", "time", "status"]


def _cells(s: RunSummary, digits: bool) -> list[str]:
    def fmt(value: float | None, spec: str) -> str:
        if value is None:
            return ""
        return format(value, spec) if digits else repr(value)

    return [s.name, s.config, fmt(s.params_m, ".3f"), fmt(s.gflops, ".2f"),
            "" if s.image_size is None else str(s.image_size), fmt(s.images_per_s, ".2f"), fmt(s.best_ap, ".4f"),
            fmt(s.best_ap50, ".4f"), "" if s.best_step is None else str(s.best_step), fmt(s.best_time_s, ".1f"),
            s.time_source if s.best_time_s is not None else "", s.status + (f" ({s.note})" if s.note else "")]


def write_table(summaries: Sequence[RunSummary], out_dir: Path) -> tuple[Path, Path]:
    """``out_dir/compare.md`` (rounded) and ``out_dir/compare.csv`` (full precision, as in the logs)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    md += ["| " + " | ".join(c.replace("|", "/") for c in _cells(s, True)) + " |" for s in summaries]
    md_path, csv_path = out_dir / "compare.md", out_dir / "compare.csv"
    with atomic_output(md_path) as tmp:
        tmp.write_text("\n".join(md) + "\n")
    with atomic_output(csv_path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(_cells(s, False) for s in summaries)
    return md_path, csv_path


def plot_comparison(summaries: Sequence[RunSummary], out_png: Path, x: str = "time") -> Path:
    """Left: AP (solid) and AP50 (dashed) of every evaluation against time (s) or step, one colour per
    run; right: best AP against GFLOPs, each point labelled with its run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_curve, ax_cost) = plt.subplots(1, 2, figsize=(14, 5.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    use_time = x == "time" and all(r.get("time_s") is not None for s in summaries for r in s.evals)
    sources = sorted({s.time_source for s in summaries if s.evals})
    for i, s in enumerate(summaries):
        color = colors[i % len(colors)]
        rows = [r for r in s.evals if _number(r.get("AP")) is not None and r["AP"] >= 0]
        if not rows:
            continue
        xs = [r["time_s"] if use_time else r["step"] for r in rows]
        ax_curve.plot(xs, [r["AP"] for r in rows], color=color, marker="o", markersize=4, label=f"{s.name} AP")
        ap50 = [(xv, r["AP50"]) for xv, r in zip(xs, rows) if _number(r.get("AP50")) is not None]
        if ap50:
            ax_curve.plot(*zip(*ap50), color=color, marker="o", markersize=3, linestyle="--", alpha=0.8,
                          label=f"{s.name} AP50")
    if use_time:
        xlabel = "seconds since the run started" if sources == ["measured"] else \
            "seconds (" + ", ".join("measured" if t == "measured" else "training steps, from the log" for t in sources) + ")"
    else:
        xlabel = "step"
    ax_curve.set(title="AP (solid) and AP50 (dashed) per evaluation", xlabel=xlabel, ylabel="AP")
    ax_curve.set_xlim(left=0)
    ax_curve.set_ylim(bottom=0)
    if not ax_curve.get_legend_handles_labels()[0]:
        ax_curve.text(0.5, 0.5, "no eval rows", ha="center", va="center", transform=ax_curve.transAxes)
    else:
        ax_curve.legend(fontsize=8)
    points = [(s.gflops, s.best_ap, s.name, colors[i % len(colors)]) for i, s in enumerate(summaries)
              if s.gflops is not None and s.best_ap is not None]
    for g, ap, name, color in points:
        ax_cost.scatter([g], [ap], color=color, s=50, zorder=3)
        ax_cost.annotate(name, (g, ap), textcoords="offset points", xytext=(6, 4), fontsize=9)
    if points and len({p[0] for p in points}) > 1 and max(p[0] for p in points) / min(p[0] for p in points) > 20:
        ax_cost.set_xscale("log")
    ax_cost.set(title="best AP against GFLOPs (one image at the config's input size)", xlabel="GFLOPs",
                ylabel="best AP")
    if not points:
        ax_cost.text(0.5, 0.5, "no run with both", ha="center", va="center", transform=ax_cost.transAxes)
    else:  # room for the labels
        ax_cost.margins(x=0.25, y=0.2)
        ax_cost.set_ylim(bottom=0)
    for ax in (ax_curve, ax_cost):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_output(out_png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out_png


# -------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m utils.compare", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="*", help="config modules to train, e.g. config/yolov4_effb0.py")
    ap.add_argument("--runs", nargs="+", default=[], metavar="RUN_DIR", help="finished run folders to read")
    ap.add_argument("--data", help="dataset YAML for every config (replaces dataset.data)")
    ap.add_argument("--set", action="append", default=[], metavar="Section.field=value",
                    help="override applied to every config (repeatable); General.name=NAME names runs NAME_<stem>")
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, help="schedule.end_epoch for every config")
    budget.add_argument("--budget-minutes", type=float, help="stop each run (SIGTERM) after this many minutes")
    ap.add_argument("--out", default="runs/compare", help="folder for compare.md / .csv / .png (default runs/compare)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace an earlier comparison's files in --out, and start afresh in run folders that "
                         "already hold a run (passed to detection_train.py)")
    ap.add_argument("--x", choices=("time", "step"), default="time", help="x axis of the AP curves")
    args = ap.parse_args(argv)
    if not args.configs and not args.runs:
        ap.error("give config modules to train, or --runs RUN_DIR ...")
    if args.epochs is not None and args.epochs < 1:
        ap.error("--epochs must be >= 1")
    if args.budget_minutes is not None and args.budget_minutes <= 0:
        ap.error("--budget-minutes must be > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    say = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    from core.config.loading import ConfigError

    out_dir = Path(args.out)
    for run in args.runs:
        if not (Path(run) / "log.jsonl").is_file():
            say(f"error: no training log at {Path(run) / 'log.jsonl'}")
            return 2
    folders = []
    for config in args.configs:
        try:
            folders.append(run_folder(config, args.set, args.data))
        except ConfigError as err:
            folders.append(None)
            say(f"warning: {config}: {err}; its training will fail")
    if len({f for f in folders if f is not None}) < len([f for f in folders if f is not None]):
        say("error: two configs have the same file name and would train into one run folder; rename one")
        return 2
    taken = [f for f in folders if f is not None and holds_run(f)]
    if taken and not args.overwrite:
        say(f"error: {', '.join(map(str, taken))} already hold{'s' if len(taken) == 1 else ''} a run; nothing "
            "trained. Pass --overwrite to train them afresh, --set General.name=NAME to train into NAME_<config> "
            f"folders, or read them as they are with --runs {' '.join(map(str, taken))}")
        return 2
    written = [out_dir / name for name in ("compare.md", "compare.csv", "compare.png")]
    written += [out_dir / f"train_{run_name(config, args.set)}.txt" for config in args.configs]
    try:  # an earlier comparison's table holds times that --runs cannot measure again
        refuse_existing(written, args.overwrite, "choose another --out")
    except OutputPathError as err:
        say(f"error: {err}")
        return 2

    summaries: list[RunSummary] = []
    budget_s = args.budget_minutes * 60 if args.budget_minutes is not None else None
    try:
        for config, folder in zip(args.configs, folders):
            name = run_name(config, args.set)
            folder = folder or Path("runs") / name
            cmd = train_command(config, args.set, args.data, args.epochs, args.overwrite)
            transcript = out_dir / f"train_{name}.txt"
            say(f"training {config} -> {folder} (output: {transcript})")
            times, status = run_training(cmd, folder, transcript, budget_s, say)
            if status.startswith("failed"):
                tail = transcript.read_text(errors="replace").strip().splitlines()[-3:] if transcript.is_file() else []
                say(f"  {name}: {status}" + "".join(f"\n    {line}" for line in tail))
            summaries.append(summarize_run(folder, times, status, name=name, config=str(config)))
    except KeyboardInterrupt:
        say("interrupted: writing the table of the runs so far")
    for run in args.runs:
        summaries.append(summarize_run(run))
    md, csv_path = write_table(summaries, out_dir)
    png = plot_comparison(summaries, out_dir / "compare.png", args.x)
    print(md.read_text(), end="")
    say(f"wrote {md}, {csv_path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
