"""Test a trained detector on the dataset's val split and print COCO metrics (pycocotools).

    python detection_test.py --config config/effdet_b0.py [--epoch N | --weights FILE] [--vis DIR]
    python detection_test.py --config config/effdet_b0.py --results FILE.json   # score existing results
    python detection_test.py --config config/effdet_b0.py --tta flip,0.8,1.2 --ensemble runs/b/epoch_0300.pt@config/b.py

--tta runs extra passes (mirrored and / or rescaled inputs) and fuses them per image with weighted
boxes fusion; --ensemble adds other checkpoints (each with its embedded config, or CONFIG after
'@') whose detections are fused with this model's by WBF. Both print the single model's AP next to
theirs and write results_<split>_tta.json / results_<split>_ensemble.json.

--tile SIZE [--overlap F] [--tile-merge nms|wbf] [--tile-full] also predicts overlapping SIZE x SIZE
windows of each image (original pixels; core.inference.tiling) and merges them, for large images with small
objects (without the --tta passes); its AP is printed next to the single model's and
results_<split>_tiled.json written.

Every run writes a confusion matrix (core.evaluation.confusion; rows predicted, columns true, with a
background row for missed objects and a background column for false detections) at
--confusion-iou (default 0.45) and --confusion-score (default 0.25): printed, and as
confusion_<split>.png and .csv in the run folder (confusion_<split>_tiled.* for --tile).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.engine.cli import add_runtime_arguments, config_parser, load_from_args, run_main

if TYPE_CHECKING:  # the heavy imports stay inside main()
    import torch

    from core.config.loading import Config
    from core.data.records import ImageRecord
    from core.engine.tester import TrainedModel
    from core.evaluation.coco_eval import EvalResult
    from core.ops.postprocess import Detections


def vis_paths(args: argparse.Namespace, records: "list[ImageRecord]") -> list[Path]:
    """The drawing ``--vis`` writes per record (``<stem>.png``, ``<stem>_<k>.png`` where stems repeat; none
    without ``--vis``). Exits with one line when a drawing would land on one of the
    pictures, or on an existing file without ``--overwrite``."""
    if not args.vis:
        return []
    from core.engine.output_paths import OutputPathError, refuse_existing, refuse_inputs
    from utils.predict import vis_names

    paths = [Path(args.vis) / name for name in vis_names([Path(r.file_name) for r in records])]
    try:
        refuse_inputs(paths, [r.file_name for r in records], "choose another --vis")
        refuse_existing(paths, args.overwrite, "choose another --vis")
    except OutputPathError as err:
        raise SystemExit(f"error: {err}") from None
    return paths


def main() -> int:
    parser = config_parser(__doc__)
    parser.add_argument("--epoch", type=int, help="checkpoint epoch of this run (default: newest)")
    parser.add_argument("--weights", help="checkpoint file, or 'best' for this run's best.pt "
                        "(default: this run's newest)")
    parser.add_argument("--split", default="val", help="dataset split to test on (default: val)")
    parser.add_argument("--results", help="evaluate this COCO results json instead of running a model")
    add_runtime_arguments(parser)
    parser.add_argument("--vis", metavar="DIR", help="save images with their detections drawn into DIR")
    parser.add_argument("--vis-score", type=float, default=0.3, help="lowest score drawn with --vis")
    parser.add_argument("--overwrite", action="store_true", help="replace drawings that already exist in --vis")
    parser.add_argument("--tta", metavar="SPEC", help="test-time augmentation: 'flip', scales such as '0.8,1.2', "
                        "or both ('flip,0.8,1.2'); passes are fused by WBF")
    parser.add_argument("--ensemble", nargs="+", metavar="WEIGHTS[@CONFIG]", default=[],
                        help="extra checkpoints fused with this model by WBF (config: embedded, or after '@')")
    parser.add_argument("--ensemble-weights", metavar="W1,W2,...", help="WBF weight per model, this one first "
                        "(default: all 1)")
    parser.add_argument("--wbf-iou", type=float, default=0.55, help="IoU above which WBF joins boxes (default 0.55)")
    from utils.predict import add_tile_arguments, tile_plan

    add_tile_arguments(parser)
    parser.add_argument("--confusion-iou", type=float, default=0.45, metavar="IOU", help="confusion matrix: IoU above "
                        "which a detection matches an object (default 0.45)")
    parser.add_argument("--confusion-score", type=float, default=0.25, metavar="S", help="confusion matrix: lowest "
                        "score of a detection counted (default 0.25)")
    args = parser.parse_args()
    cfg = load_from_args(args)
    if args.results and (args.tta or args.ensemble or args.tile or args.vis):
        parser.error("--tta, --ensemble, --tile and --vis run a model; none can be combined with --results")
    try:
        args.tiling = tile_plan(args)
    except ValueError as err:
        parser.error(str(err))
    if args.runtime != "torch" and (args.tta or args.ensemble):
        parser.error("--runtime runs one exported network at the config's input size; --tta and --ensemble need PyTorch")
    if not 0.0 <= args.confusion_iou < 1.0:
        parser.error(f"--confusion-iou {args.confusion_iou} must be in [0, 1)")
    if args.tta:
        from core.inference.ensemble import TTAPlan
        try:
            TTAPlan.parse(args.tta)
        except ValueError as err:
            parser.error(str(err))
    if args.ensemble_weights:
        try:
            weights = [float(w) for w in args.ensemble_weights.split(",")]
        except ValueError:
            parser.error(f"--ensemble-weights '{args.ensemble_weights}' must be comma-separated numbers")
        if len(weights) != 1 + len(args.ensemble) or min(weights) <= 0:
            parser.error(f"--ensemble-weights needs {1 + len(args.ensemble)} positive numbers (this model first), "
                         f"got '{args.ensemble_weights}'")

    import json

    from core.data.loader import build_loader
    from core.data.spec import load_dataset_spec, read_split
    from core.engine.inference import coco_results, predict_batches
    from core.engine.runtime import run_dir, select_device
    from core.engine.tester import load_run_weights, read_results, write_json
    from core.evaluation.coco_eval import coco_ground_truth, evaluate, format_per_class_table, save_pr_curves

    spec = load_dataset_spec(cfg.dataset.data)
    records = read_split(spec, args.split)
    drawings = vis_paths(args, records)  # refused before the model loads when they would replace anything
    coco_gt = coco_ground_truth(spec, args.split, records)
    out = run_dir(cfg)
    evaluated = None  # image ids scored: all of the records, or those the loader read (skip_bad_images)
    if args.results:
        results = read_results(Path(args.results), records, args.split)
        class_names, category_ids = spec.class_names, spec.category_ids
    else:
        import torch

        device = select_device(cfg.General.device) if args.runtime == "torch" else torch.device("cpu")
        trained = load_run_weights(cfg, args.epoch, args.weights, device)
        if args.runtime != "torch":
            import dataclasses

            from core.inference.exported import deployed_network

            exported = deployed_network(trained.model, trained.task, cfg, args.runtime, cfg.test.batch_image,
                                        args.calib_images)
            trained = dataclasses.replace(trained, model=exported)
            int8 = args.runtime == "openvino-int8"
            calibrated = f", calibrated on {args.calib_images} training images" if int8 else ""
            print(f"runtime: {args.runtime} (the network exported to ONNX, batch {cfg.test.batch_image}{calibrated}, "
                  f"float parts in {exported.precision}; DetLab's post-processing)")
        if trained.class_names != spec.class_names:
            print(f"warning: model classes {trained.class_names} differ from dataset classes {spec.class_names}")
        class_names, category_ids = trained.class_names, trained.category_ids
        print(f"testing {trained.source} on {spec.path} [{args.split}]: {len(records)} images")
        loader = build_loader(cfg, records, train=False, batch_size=cfg.test.batch_image)
        detections = predict_batches(trained.model, trained.task, loader, device,
                                     cfg.General.precision, progress=True)
        results = coco_results(detections, category_ids)
        evaluated = list(detections)
        results_path = out / f"results_{args.split}.json"
        write_json(results, results_path)
        print(f"detections written to {results_path}")
        if args.vis:
            from core.inference.visualize import draw_detections, save_png
            from core.data.dataset import load_image

            Path(args.vis).mkdir(parents=True, exist_ok=True)
            for rec, drawing in zip(records, drawings):
                det = detections.get(rec.image_id)
                if det is None:  # unreadable, skipped by the loader (dataset.skip_bad_images)
                    continue
                keep = det.scores >= args.vis_score
                image = draw_detections(load_image(rec), det.boxes[keep], det.labels[keep], det.scores[keep],
                                        class_names)
                save_png(image, drawing)
            print(f"{len(records)} images with detections saved to {args.vis}")

    result = evaluate(coco_gt, results, class_names, category_ids, image_ids=evaluated)
    print(result.summary, end="")
    print(format_per_class_table(result.per_class))
    curves = save_pr_curves(result, class_names, out / f"pr_curves_{args.split}")
    print(f"precision-recall curves: {len(curves)} PNGs in {out / f'pr_curves_{args.split}'}")
    if args.results:
        from core.evaluation.confusion import detections_from_results

        found = detections_from_results(results, category_ids)
    else:
        found = {i: (d.boxes, d.scores, d.labels) for i, d in detections.items()}
    write_confusion(args, records, found, evaluated, class_names, out / f"confusion_{args.split}")
    if args.tta or args.ensemble or args.tiling:
        rows = [(f"single model ({trained.source.name})", result)]
        if args.tiling:
            rows += compare_tiled(args, cfg, trained, device, records, coco_gt, detections, out)
        if args.tta or args.ensemble:
            rows += compare_tta_ensemble(args, cfg, trained, device, records, coco_gt, detections, out)
        print(format_comparison(rows, args.split, len(records)))
    return 0


def write_confusion(args: argparse.Namespace, records: list[ImageRecord], found: dict[int, tuple],
                    evaluated: list[int] | None, class_names: list[str], stem: Path) -> None:
    """Print the confusion matrix of ``found`` (``{image_id: (boxes xyxy original pixels, scores,
    labels)}``) against the records' ground truth (those in ``evaluated``; None = all) and write it
    to ``stem``.png and ``stem``.csv."""
    import numpy as np

    from core.evaluation.confusion import confusion_matrix, format_confusion, save_confusion_png, write_confusion_csv

    scored = records if evaluated is None else [r for r in records if r.image_id in set(evaluated)]
    none = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
    matrix = confusion_matrix([found.get(r.image_id, none) for r in scored], [(r.boxes, r.labels) for r in scored],
                              len(class_names), args.confusion_iou, args.confusion_score)
    print(f"confusion matrix, {stem.name} (rows predicted, columns true; match IoU > {args.confusion_iou:g}, "
          f"score >= {args.confusion_score:g}):")
    print(format_confusion(matrix, class_names))
    png = save_confusion_png(matrix, class_names, stem.with_name(stem.name + ".png"), args.confusion_iou,
                             args.confusion_score)
    csv_path = write_confusion_csv(matrix, class_names, stem.with_name(stem.name + ".csv"))
    print(f"confusion matrix written to {png} and {csv_path}")


def compare_tiled(args: argparse.Namespace, cfg: Config, trained: TrainedModel, device: torch.device,
                  records: list[ImageRecord], coco_gt: Any, detections: dict[int, Detections],
                  out: Path) -> list[tuple[str, EvalResult]]:
    """Predict the records tile by tile (--tile), write results_<split>_tiled.json and the tiled
    confusion matrix, return ``[(row name, EvalResult)]``."""
    from core.engine.inference import coco_results
    from core.engine.tester import write_json
    from core.evaluation.coco_eval import evaluate
    from core.inference.predictor import Predictor

    det = Predictor(trained.model, cfg, trained.class_names, trained.category_ids, device, task=trained.task,
                   source=str(trained.source))
    det.wbf_iou = args.wbf_iou
    plan = args.tiling
    print(f"tiled prediction: {plan.describe()}")
    tiled = det.predict_records_tiled([r for r in records if r.image_id in detections], plan, progress=True)
    results = coco_results(tiled, trained.category_ids)
    write_json(results, out / f"results_{args.split}_tiled.json")
    write_confusion(args, records, {i: (d.boxes, d.scores, d.labels) for i, d in tiled.items()}, list(tiled),
                    trained.class_names, out / f"confusion_{args.split}_tiled")
    return [(f"tiled ({plan.describe()})", evaluate(coco_gt, results, trained.class_names, trained.category_ids,
                                                   image_ids=list(detections)))]


COMPARED = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


def format_comparison(rows: list[tuple[str, EvalResult]], split: str, n_images: int) -> str:
    """A table of the main COCO numbers (percent) of the single model, TTA and ensemble rows."""
    name_w = max(len(name) for name, _ in rows)
    lines = [f"single model vs TTA / ensemble on {split} ({n_images} images), COCO metrics in percent:",
             f"{'model':<{name_w}}  " + "  ".join(f"{k:>6}" for k in COMPARED)]
    for name, res in rows:
        cells = [f"{100 * res.stats[k]:6.1f}" if res.stats[k] >= 0 else f"{'n/a':>6}" for k in COMPARED]
        lines.append(f"{name:<{name_w}}  " + "  ".join(cells))
    return "\n".join(lines)


def compare_tta_ensemble(args: argparse.Namespace, cfg: Config, trained: TrainedModel, device: torch.device,
                         records: list[ImageRecord], coco_gt: Any, detections: dict[int, Detections],
                         out: Path) -> list[tuple[str, EvalResult]]:
    """Run the --tta passes and --ensemble members, write their results json, return
    ``[(row name, EvalResult)]``."""
    from core.engine.checkpoint import CheckpointError
    from core.engine.inference import coco_results
    from core.engine.tester import write_json
    from core.inference.ensemble import TTAPlan, fuse_per_image
    from core.evaluation.coco_eval import evaluate
    from core.inference.predictor import Predictor

    main_det = Predictor(trained.model, cfg, trained.class_names, trained.category_ids, device, task=trained.task,
                        source=str(trained.source))
    main_det.wbf_iou = args.wbf_iou
    plan = TTAPlan.parse(args.tta) if args.tta else None
    rows = []
    own = detections
    if plan is not None:
        print(f"TTA passes (scale, flip): {plan.passes()} at input sizes "
              f"{[main_det.transform(s).size for s in plan.scales]}")
        own = main_det.predict_records(records, plan)
        results = coco_results(own, trained.category_ids)
        write_json(results, out / f"results_{args.split}_tta.json")
        rows.append((f"TTA {plan.describe()} (WBF of {len(plan.passes())} passes)",
                     evaluate(coco_gt, results, trained.class_names, trained.category_ids,
                              image_ids=list(detections))))
    if args.ensemble:
        runs = [own]
        for item in args.ensemble:
            weights, _, config = item.partition("@")
            member = Predictor.from_checkpoint(weights, config or None, device,
                                              allow_pickle=cfg.pretrain.allow_pickle)
            if member.class_names != trained.class_names:
                raise CheckpointError(f"--ensemble {weights}: classes {member.class_names} differ from "
                                      f"{trained.class_names} of {trained.source}; ensemble members must share classes")
            member.wbf_iou = args.wbf_iou
            print(f"ensemble member {weights} (config {member.cfg.source}, input {member.cfg.dataset.image_size})")
            runs.append(member.predict_records(records, plan))
        weights_list = [float(w) for w in args.ensemble_weights.split(",")] if args.ensemble_weights else None
        fused = fuse_per_image(runs, weights_list, args.wbf_iou, max_det=cfg.test.max_det_per_image)
        results = coco_results(fused, trained.category_ids)
        write_json(results, out / f"results_{args.split}_ensemble.json")
        rows.append((f"ensemble of {len(runs)} (WBF{', each with TTA' if plan else ''})",
                     evaluate(coco_gt, results, trained.class_names, trained.category_ids,
                              image_ids=list(detections))))
    return rows


if __name__ == "__main__":
    run_main(main)
