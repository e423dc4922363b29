"""Test a trained detector on the dataset's val split and print COCO metrics (pycocotools).

    python detection_test.py --config config/effdet_b0.py [--epoch N | --weights FILE] [--vis DIR]
    python detection_test.py --config config/effdet_b0.py --results FILE.json   # score existing results
"""
from __future__ import annotations

from pathlib import Path

from core.cli import config_parser, load_from_args, run_main


def main() -> int:
    parser = config_parser(__doc__)
    parser.add_argument("--epoch", type=int, help="checkpoint epoch of this run (default: newest)")
    parser.add_argument("--weights", help="checkpoint file (default: this run's newest)")
    parser.add_argument("--split", default="val", help="dataset split to test on (default: val)")
    parser.add_argument("--results", help="evaluate this COCO results json instead of running a model")
    parser.add_argument("--vis", metavar="DIR", help="save images with their detections drawn into DIR")
    parser.add_argument("--vis-score", type=float, default=0.3, help="lowest score drawn with --vis")
    args = parser.parse_args()
    cfg = load_from_args(args)

    import json

    from core.data.loader import build_loader
    from core.data.spec import load_dataset_spec, read_split
    from core.engine.inference import coco_results, predict_batches
    from core.engine.runtime import run_dir, select_device
    from core.engine.tester import find_weights, load_trained, write_json
    from core.evaluation import coco_ground_truth, evaluate, format_per_class_table, save_pr_curves

    spec = load_dataset_spec(cfg.dataset.data)
    records = read_split(spec, args.split)
    coco_gt = coco_ground_truth(spec, args.split, records)
    out = run_dir(cfg)
    if args.results:
        results = json.loads(Path(args.results).read_text())
        class_names, category_ids = spec.class_names, spec.category_ids
    else:
        device = select_device(cfg.General.device)
        trained = load_trained(cfg, find_weights(cfg, args.epoch, args.weights), device)
        if trained.class_names != spec.class_names:
            print(f"warning: model classes {trained.class_names} differ from dataset classes {spec.class_names}")
        class_names, category_ids = trained.class_names, trained.category_ids
        print(f"testing {trained.source} on {spec.path} [{args.split}]: {len(records)} images")
        loader = build_loader(cfg, records, train=False, batch_size=cfg.test.batch_image)
        detections = predict_batches(trained.model, trained.task, loader, device,
                                     amp=cfg.General.fp16 and device.type == "cuda", progress=True)
        results = coco_results(detections, category_ids)
        results_path = out / f"results_{args.split}.json"
        write_json(results, results_path)
        print(f"detections written to {results_path}")
        if args.vis:
            from core.visualize import draw_detections
            from core.data.dataset import load_image

            vis_dir = Path(args.vis)
            vis_dir.mkdir(parents=True, exist_ok=True)
            for rec in records:
                det = detections[rec.image_id]
                keep = det.scores >= args.vis_score
                image = draw_detections(load_image(rec), det.boxes[keep], det.labels[keep], det.scores[keep],
                                        class_names)
                image.save(vis_dir / f"{Path(rec.file_name).stem}.png")
            print(f"{len(records)} images with detections saved to {vis_dir}")

    result = evaluate(coco_gt, results, class_names, category_ids)
    print(result.summary, end="")
    print(format_per_class_table(result.per_class))
    curves = save_pr_curves(result, class_names, out / f"pr_curves_{args.split}")
    print(f"precision-recall curves: {len(curves)} PNGs in {out / f'pr_curves_{args.split}'}")
    return 0


if __name__ == "__main__":
    run_main(main)
