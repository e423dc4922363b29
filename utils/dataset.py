"""Dataset tools: check, subset, split, convert, show.

    python -m utils.dataset check DATA.yaml [--split train] [--decode]
    python -m utils.dataset subset SRC.json OUT.json --classes motorcycle,car,bus,truck [--keep-empty] [--overwrite]
    python -m utils.dataset split SRC.json OUT_DIR (--val-fraction 0.2 | --folds 5) [--seed 0] [--overwrite]
    python -m utils.dataset convert --to voc|yolo|coco DATA.yaml OUT_DIR [--copy-images] [--overwrite]
    python -m utils.dataset show DATA.yaml --config C [--out grid.png] [--count 16]

check: prints per-class box counts, a COCO box-size histogram and every problem found (missing
or unreadable image, box outside the image, zero or negative size, unknown class, malformed
entry) with its file and annotation id / object / line; exits 1 when there are problems. It also
warns (one line each) about image paths in the annotations that leave the dataset root.
subset: a COCO json restricted to some classes (ids remapped to 1..K in the order given),
images without them dropped unless --keep-empty. split: OUT_DIR/train.json and val.json, or
OUT_DIR/fold{k}_train.json and fold{k}_val.json, deterministic for a --seed. convert: every split
in another format plus OUT_DIR/data.yaml (images symlinked, or copied). show: a grid of augmented
training samples with their boxes, as the config's training loader makes them.

subset, split and convert never write over their input (an output that is, resolves to or would
clobber a source file or folder is refused) and replace an existing output only with --overwrite.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m utils.dataset", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="validate a dataset YAML and print counts, sizes and every problem")
    p.add_argument("data", help="dataset YAML")
    p.add_argument("--split", action="append", help="split to check (repeatable; default: all)")
    p.add_argument("--decode", action="store_true", help="decode every image fully (finds truncated files; slower)")

    p = sub.add_parser("subset", help="COCO json restricted to some classes")
    p.add_argument("src", help="COCO json")
    p.add_argument("out", help="output COCO json")
    p.add_argument("--classes", required=True, help="comma-separated category names, e.g. car,bus,truck")
    p.add_argument("--keep-empty", action="store_true", help="keep images without any of these classes")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")

    p = sub.add_parser("split", help="train/val or K-fold splits of a COCO json")
    p.add_argument("src", help="COCO json")
    p.add_argument("out_dir", help="output folder")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--val-fraction", type=float, help="fraction of images for val, e.g. 0.2")
    g.add_argument("--folds", type=int, help="number of cross-validation folds")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace split files that exist in OUT_DIR")

    p = sub.add_parser("convert", help="write a dataset in another format")
    p.add_argument("--to", required=True, choices=("coco", "voc", "yolo"), help="target format")
    p.add_argument("data", help="dataset YAML")
    p.add_argument("out_dir", help="output folder (gets data.yaml, images/, annotations/ or labels/)")
    p.add_argument("--copy-images", action="store_true", help="copy images instead of symlinking them")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier convert in OUT_DIR")

    p = sub.add_parser("show", help="save a grid of augmented training samples with their boxes")
    p.add_argument("data", help="dataset YAML")
    p.add_argument("--config", required=True, help="experiment module (its dataset / augment sections apply)")
    p.add_argument("--set", action="append", default=[], metavar="Section.field=value", help="config override")
    p.add_argument("--out", default="augmented_grid.png", help="output PNG (default augmented_grid.png)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--split", default="train", help="split to draw from (default train)")
    p.add_argument("--count", type=int, default=16, help="number of samples (default 16)")
    p.add_argument("--cols", type=int, default=4, help="grid columns (default 4)")
    p.add_argument("--seed", type=int, default=0, help="augmentation seed (default 0)")
    p.add_argument("--epoch", type=int, default=0, help="epoch whose sample seeds are used (default 0)")
    return ap


def cmd_check(args: argparse.Namespace) -> int:
    """Print the check report; 1 when the dataset has problems."""
    from core.data.check import check_dataset
    from core.data.spec import load_dataset_spec

    spec = load_dataset_spec(args.data)
    report = check_dataset(spec, args.split, decode=args.decode)
    print(report.format())
    return 0 if report.ok else 1


def _check_outputs(outputs: list[Path], src: Path, overwrite: bool, hint: str) -> None:
    """Refuse an output that is (or resolves to) ``src``, and an existing one unless ``overwrite``."""
    from core.data.records import DatasetError
    from core.engine.output_paths import refuse_existing, refuse_inputs

    refuse_inputs(outputs, [src], hint, DatasetError)
    refuse_existing(outputs, overwrite, hint, DatasetError)


def _write_json(data: dict, path: Path) -> None:
    from core.engine.output_paths import atomic_output

    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data))


def cmd_subset(args: argparse.Namespace) -> int:
    """Write the class subset of a COCO json."""
    from core.data.convert import subset_coco
    from core.data.formats.coco import check_coco_ids, load_coco_json

    src = Path(args.src)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    _check_outputs([Path(args.out)], src, args.overwrite, "write OUT to another file")
    data = load_coco_json(src)
    check_coco_ids(data, src)
    out = subset_coco(data, classes, args.keep_empty, str(src))
    _write_json(out, Path(args.out))
    cats = ", ".join(f"{c['id']}={c['name']}" for c in out["categories"])
    print(f"{args.out}: {len(out['images'])} images, {len(out['annotations'])} annotations, categories {cats}")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    """Write train/val or K-fold COCO jsons."""
    from core.data.convert import kfold_coco, split_coco
    from core.data.formats.coco import check_coco_ids, load_coco_json

    data = load_coco_json(Path(args.src))
    check_coco_ids(data, Path(args.src))
    out_dir = Path(args.out_dir)
    if args.folds is not None:
        named = []
        for k, (train, val) in enumerate(kfold_coco(data, args.folds, args.seed)):
            named += [(f"fold{k}_train.json", train), (f"fold{k}_val.json", val)]
    else:
        train, val = split_coco(data, args.val_fraction, args.seed)
        named = [("train.json", train), ("val.json", val)]
    _check_outputs([out_dir / name for name, _ in named], Path(args.src), args.overwrite,
                   "choose another OUT_DIR")
    for name, part in named:
        _write_json(part, out_dir / name)
        print(f"{out_dir / name}: {len(part['images'])} images, {len(part['annotations'])} annotations")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert every split of a dataset."""
    from core.data.convert import convert_dataset
    from core.data.spec import load_dataset_spec

    spec = load_dataset_spec(args.data)
    result = convert_dataset(spec, args.to, Path(args.out_dir), "copy" if args.copy_images else "link",
                             overwrite=args.overwrite)
    for split in result.images:
        note = (f"; {result.not_carried[split]} crowd/difficult annotations not carried over"
                if result.not_carried[split] else "")
        print(f"[{split}] {result.images[split]} images, {result.boxes[split]} boxes{note}")
    print(f"wrote {result.yaml_path} ({args.to})")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Save a grid of augmented samples."""
    import numpy as np
    from PIL import Image

    from core.config.loading import load_config
    from core.data.loader import build_loader
    from core.data.records import DatasetError
    from core.data.sampler import sample_seed
    from core.engine.output_paths import real, refuse_existing, refuse_inputs, within
    from core.engine.recipe import resolve_recipe
    from core.data.spec import load_dataset_spec, read_split
    from core.inference.visualize import draw_detections, save_grid

    cfg = load_config(args.config, list(args.set) + [f"dataset.data={args.data}"])
    spec = load_dataset_spec(args.data)
    records = read_split(spec, args.split)
    # never over the YAML or a file of the dataset (any split's picture, annotation or list), --overwrite or not;
    # an existing grid elsewhere only with --overwrite
    out = real(args.out)
    for name, split in spec.splits.items():
        for what, place in (("annotations", split.annotations), ("list", split.list)):
            if place is not None and within(out, real(place)) and os.path.lexists(out):
                raise DatasetError(f"{args.out}: is a file of split '{name}''s {what} ({place}), which is never "
                                   "written over; choose another --out")
    pictures = [r.file_name for r in records]
    for name in spec.splits:
        if name != args.split:
            try:
                pictures += [r.file_name for r in read_split(spec, name)]
            except DatasetError:  # a broken other split: its own check says so; its pictures are not known here
                pass
    refuse_inputs([out], [Path(args.data), *pictures], "choose another --out", DatasetError)
    refuse_existing([Path(args.out)], args.overwrite, "choose another --out", DatasetError)
    if not records:
        print(f"error: split '{args.split}' of {spec.path} has no images", file=sys.stderr)
        return 2
    # the scale jitter a training run of this config on these images would choose, where it says "auto"
    resolve_recipe(cfg, len(records))
    dataset = build_loader(cfg, records, train=True, batch_size=1, seed=args.seed).dataset
    mean, std = dataset.transform.mean, dataset.transform.std
    tiles = []
    for i in range(args.count):
        index = i % len(records)
        item = dataset[(index, sample_seed(args.seed, args.epoch, index))]
        if item is None:
            continue
        image, target = item
        pixels = (image * std + mean).clamp(0, 255).round().byte().permute(1, 2, 0).numpy()
        tiles.append(draw_detections(Image.fromarray(np.ascontiguousarray(pixels)), target["boxes"],
                                     target["labels"], None, spec.class_names))
    path = save_grid(tiles, args.out, cols=args.cols)
    print(f"{len(tiles)} augmented {args.split} samples drawn to {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit status 0 ok, 1 check found problems, 2 bad input."""
    args = _parser().parse_args(argv)
    from core.config.loading import ConfigError
    from core.data.records import DatasetError

    try:
        return {"check": cmd_check, "subset": cmd_subset, "split": cmd_split, "convert": cmd_convert,
                "show": cmd_show}[args.command](args)
    except (DatasetError, ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
