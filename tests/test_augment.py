"""Augmentations keep boxes on their objects: photometric, mosaic, MixUp, CutMix; seeded and off by default.

Pictures are grey with filled rectangles of distinct hues; after augmenting picture and boxes
together, most pixels inside each output box must still show its rectangle's hue.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.colors import rgb_to_hsv
from PIL import Image

from core.config.loading import load_config
from core.data.augment import (AugmentConfig, PhotometricConfig, cutmix, mixup, mosaic, occlude_boxes)
from core.data.dataset import DetectionDataset
from core.data.loader import build_loader
from core.data.records import ImageRecord
from core.data.transforms import build_transform

ROOT = Path(__file__).resolve().parent.parent
PALETTE = [(255, 0, 0), (0, 200, 0), (0, 0, 255), (255, 230, 0), (0, 220, 255), (255, 0, 255)]
HUES = rgb_to_hsv(np.array(PALETTE, dtype=np.float64)[None] / 255.0)[0, :, 0]
GREY = (90, 90, 90)
S = 128


def picture(width: int, height: int, boxes: list[tuple[int, int, int, int]], colours: list[int]) -> Image.Image:
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:] = GREY
    for (x1, y1, x2, y2), c in zip(boxes, colours):
        arr[y1:y2, x1:x2] = PALETTE[c]
    return Image.fromarray(arr)


# A: red / green / blue in its left 40%; B: yellow / cyan / magenta in its right 40% (no overlap after resizing)
A_BOXES = [(4, 10, 70, 60), (10, 80, 60, 140), (40, 62, 78, 78)]
B_BOXES = [(100, 8, 156, 90), (98, 120, 150, 190), (130, 95, 158, 115)]
A_SIZE, B_SIZE = (200, 150), (160, 200)


def sample_a() -> tuple[Image.Image, np.ndarray, np.ndarray]:
    return picture(*A_SIZE, A_BOXES, [0, 1, 2]), np.array(A_BOXES, np.float32), np.array([0, 1, 2])


def sample_b() -> tuple[Image.Image, np.ndarray, np.ndarray]:
    return picture(*B_SIZE, B_BOXES, [3, 4, 5]), np.array(B_BOXES, np.float32), np.array([3, 4, 5])


def hue_map(rgb: np.ndarray) -> np.ndarray:
    """Palette index of each pixel of an ``[H, W, 3]`` 0..255 image by hue, -1 for grey / dark."""
    hsv = rgb_to_hsv(np.clip(rgb, 0, 255) / 255.0)
    dist = np.abs(hsv[..., :1] - HUES[None, None, :])
    dist = np.minimum(dist, 1.0 - dist)
    idx = dist.argmin(-1)
    ok = (dist.min(-1) < 0.04) & (hsv[..., 1] > 0.2) & (hsv[..., 2] > 0.12)
    return np.where(ok, idx, -1)


def coverage(rgb: np.ndarray, box: np.ndarray, colour: int) -> float:
    """Fraction of the pixels strictly inside ``box`` (xyxy) showing ``colour``."""
    x1, y1, x2, y2 = int(np.ceil(box[0])), int(np.ceil(box[1])), int(np.floor(box[2])), int(np.floor(box[3]))
    inner = hue_map(rgb[y1:y2, x1:x2])
    return float((inner == colour).mean()) if inner.size else 0.0


def to_rgb(image: torch.Tensor) -> np.ndarray:
    """A transform output made with mean 0 / std 1 (in 0..1 units) back to 0..255 ``[H, W, 3]``."""
    return image.permute(1, 2, 0).numpy() * 255.0


def assert_on_objects(rgb: np.ndarray, boxes: np.ndarray, labels: np.ndarray, least: float = 0.8) -> None:
    assert len(boxes) == len(labels)
    h, w = rgb.shape[:2]
    assert (boxes >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert ((boxes[:, 2] - boxes[:, 0]) >= 2).all() and ((boxes[:, 3] - boxes[:, 1]) >= 2).all()
    for box, lab in zip(boxes, labels):
        assert coverage(rgb, box, int(lab)) >= least, (box, lab, coverage(rgb, box, int(lab)))


def records(tmp_path: Path) -> list[ImageRecord]:
    out = []
    for k, (im, boxes, labels) in enumerate([sample_a(), sample_b()]):
        path = tmp_path / f"{k}.png"
        im.save(path)
        out.append(ImageRecord(k + 1, str(path), im.width, im.height, boxes, labels))
    return out


def train_transform(**kw):
    return build_transform(S, (0, 0, 0), (1, 1, 1), train=True, **{"hflip_prob": 0.5, "scale_range": (0.6, 1.6), **kw})


# ----------------------------------------------------------------------------- tests


def test_hue_map_finds_the_rectangles() -> None:
    im, boxes, labels = sample_a()
    assert_on_objects(np.asarray(im, np.float64), boxes, labels, least=0.99)
    assert coverage(np.asarray(im, np.float64), np.array([150, 100, 190, 140]), 0) == 0.0  # grey area


def test_photometric_changes_colours_not_boxes() -> None:
    im, boxes, labels = sample_a()
    photo = PhotometricConfig(hsv_prob=1.0, hsv_h=0.015, hsv_s=0.7, hsv_v=0.4, brightness=0.15, contrast=0.3)
    plain, jittered = train_transform(), train_transform(photometric=photo)
    changed = 0
    for seed in range(12):
        out, b, lab, _ = jittered(im, boxes, labels, torch.Generator().manual_seed(seed))
        ref, b_ref, _, _ = plain(im, boxes, labels, torch.Generator().manual_seed(seed))
        np.testing.assert_array_equal(b, b_ref)  # geometry draws come first and are the same
        assert_on_objects(to_rgb(out), b, lab)
        changed += int((out - ref).abs().max() > 0.05)
    assert changed >= 10


def test_mosaic_boxes_follow_their_tiles() -> None:
    tiles = [sample_a(), sample_b(), sample_b(), sample_a()]
    seen = set()
    for seed in range(15):
        canvas, boxes, labels = mosaic(tiles, S, torch.Generator().manual_seed(seed), fill=GREY)
        assert canvas.size == (S, S)
        assert_on_objects(np.asarray(canvas, np.float64), boxes, labels)
        seen |= set(labels.tolist())
    assert seen == set(range(6))


def test_mixup_keeps_both_pictures_boxes() -> None:
    tf = build_transform(S, (0, 0, 0), (1, 1, 1), train=False)
    a, b = tf(*sample_a()), tf(*sample_b())
    for ratio in (0.35, 0.5, 0.65):
        image, boxes, labels = mixup(a[:3], b[:3], ratio)
        assert labels.tolist() == [0, 1, 2, 3, 4, 5]
        assert_on_objects(to_rgb(image), boxes, labels)
        torch.testing.assert_close(image, a[0] * ratio + b[0] * (1 - ratio))


def test_occlude_boxes_shrinks_or_drops() -> None:
    boxes = np.array([[10, 10, 50, 30], [100, 100, 140, 140], [200, 200, 240, 240]], np.float32)
    labels = np.array([0, 1, 2])
    patches = [(0, 0, 30, 40),        # covers the left half of box 0 over its whole height
               (105, 105, 135, 135),  # hides 56% of box 1 in its middle
               (215, 190, 225, 260)]  # a 25%-wide vertical strip through box 2
    out, lab = occlude_boxes(boxes, labels, patches[0])
    np.testing.assert_allclose(out[0], [30, 10, 50, 30])
    out, lab = occlude_boxes(boxes, labels, patches[1])
    assert 1 not in lab.tolist() and len(out) == 2
    out, lab = occlude_boxes(boxes, labels, patches[2])
    np.testing.assert_allclose(out[lab == 2][0], [200, 200, 240, 240])


def test_cutmix_boxes_stay_on_visible_objects() -> None:
    tf = build_transform(S, (0, 0, 0), (1, 1, 1), train=False)
    a, b = tf(*sample_a()), tf(*sample_b())
    pasted = 0
    for seed in range(20):
        image, boxes, labels = cutmix(a[:3], b[:3], torch.Generator().manual_seed(seed))
        rgb = to_rgb(image)
        assert_on_objects(rgb, boxes[labels < 3], labels[labels < 3], least=0.45)  # <= half hidden
        assert_on_objects(rgb, boxes[labels >= 3], labels[labels >= 3], least=0.8)  # clipped to the patch
        pasted += int((labels >= 3).any())
    assert pasted >= 3


@pytest.mark.parametrize("kind", ["mosaic", "mixup", "cutmix", "all"])
def test_dataset_level_augmentation(tmp_path: Path, kind: str) -> None:
    probs = {"mosaic": dict(mosaic_prob=1.0), "mixup": dict(mixup_prob=1.0), "cutmix": dict(cutmix_prob=1.0),
             "all": dict(mosaic_prob=0.5, mixup_prob=0.5, cutmix_prob=0.5)}[kind]
    aug = AugmentConfig(PhotometricConfig(hsv_prob=0.5, hsv_s=0.3), **probs)
    # MixUp blends whole pictures: keep the geometry fixed so that A's and B's objects never overlap
    tf = train_transform() if kind in ("mosaic", "cutmix") else train_transform(hflip_prob=0.0, scale_range=(1, 1))
    ds = DetectionDataset(records(tmp_path), tf, augment=aug)
    least = 0.45 if kind in ("cutmix", "all") else 0.8
    for seed in range(10):
        image, target = ds[(seed % 2, 1000 + seed)]
        assert image.shape == (3, S, S)
        if kind != "all":
            assert_on_objects(to_rgb(image), target["boxes"].numpy(), target["labels"].numpy(), least)
        again, target2 = ds[(seed % 2, 1000 + seed)]  # a pure function of (index, seed)
        assert torch.equal(image, again) and torch.equal(target["boxes"], target2["boxes"])
    other, _ = ds[(0, 5)]
    assert not torch.equal(ds[(0, 6)][0], other)


def test_defaults_are_off(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "config/demo.py")
    assert AugmentConfig.from_config(cfg) == AugmentConfig()
    recs = records(tmp_path)
    loader = build_loader(cfg, recs, train=True, batch_size=1)
    assert loader.dataset.augment is None and loader.dataset.transform.photometric is None
    plain = DetectionDataset(recs, train_transform())
    off = DetectionDataset(recs, train_transform(), augment=AugmentConfig())
    for key in [(0, 3), (1, 4)]:
        assert torch.equal(plain[key][0], off[key][0])
        assert torch.equal(plain[key][1]["boxes"], off[key][1]["boxes"])


def test_show_writes_a_grid(tmp_path: Path, capsys) -> None:
    from utils.dataset import main

    recs = records(tmp_path)
    data = {"images": [{"id": r.image_id, "file_name": Path(r.file_name).name, "width": r.width, "height": r.height}
                       for r in recs],
            "annotations": [{"id": 10 * r.image_id + k, "image_id": r.image_id, "category_id": int(lab) + 1,
                             "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])], "iscrowd": 0}
                            for r in recs for k, (b, lab) in enumerate(zip(r.boxes, r.labels))],
            "categories": [{"id": c + 1, "name": f"colour{c}"} for c in range(6)]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    (tmp_path / "data.yaml").write_text("format: coco\ntrain: {images: ., annotations: ann.json}\n")
    out = tmp_path / "grid.png"
    assert main(["show", str(tmp_path / "data.yaml"), "--config", str(ROOT / "config/demo.py"), "--out", str(out),
                 "--count", "4", "--set", "augment.mosaic_prob=1.0", "--set", "augment.hsv_prob=1.0"]) == 0
    grid = Image.open(out)
    assert grid.size == (4 * 256 + 3 * 4, 256)  # 4 samples of the demo's 256 px input in one row

    # an existing grid is replaced only with --overwrite; a picture of the split never
    again = ["show", str(tmp_path / "data.yaml"), "--config", str(ROOT / "config/demo.py"), "--count", "2"]
    before = out.read_bytes()
    assert main(again + ["--out", str(out)]) == 2 and out.read_bytes() == before
    assert main(again + ["--out", str(out), "--overwrite"]) == 0 and out.read_bytes() != before
    capsys.readouterr()
    for dataset_file in (Path(recs[0].file_name), tmp_path / "ann.json", tmp_path / "data.yaml"):
        kept = dataset_file.read_bytes()
        for overwrite in ([], ["--overwrite"]):
            assert main(again + ["--out", str(dataset_file), *overwrite]) == 2 and dataset_file.read_bytes() == kept
            assert "never written over" in capsys.readouterr().err  # not "pass --overwrite"


def _noise(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_mosaic_resamples_only_what_it_shows_and_shows_the_resized_tiles() -> None:
    """Each mosaic tile is resampled only where it lands on the canvas; the canvas equals pasting the
    whole resized tiles (PIL's fixed-point bilinear rounds differently by at most 2 levels). On noise
    pictures a tile off by one pixel differs by about 85 levels on average."""
    rng = np.random.default_rng(0)
    S = 96
    for trial in range(6):
        tiles = [(_noise(rng, int(rng.integers(40, 300)), int(rng.integers(40, 300))), np.zeros((0, 4)),
                  np.zeros(0, np.int64)) for _ in range(4)]
        canvas, _, _ = mosaic(tiles, S, torch.Generator().manual_seed(trial))
        g = torch.Generator().manual_seed(trial)  # the same centre as mosaic draws
        xc = int(round(0.25 * S + 0.5 * S * float(torch.rand((), generator=g))))
        yc = int(round(0.25 * S + 0.5 * S * float(torch.rand((), generator=g))))
        expected = Image.new("RGB", (S, S), (124, 116, 104))
        for k, (image, _, _) in enumerate(tiles):
            w, h = image.size
            nw, nh = max(1, round(w * S / max(w, h))), max(1, round(h * S / max(w, h)))
            expected.paste(image.resize((nw, nh), Image.BILINEAR), (xc - nw if k in (0, 2) else xc,
                                                                     yc - nh if k in (0, 1) else yc))
        diff = np.abs(np.asarray(canvas, np.int16) - np.asarray(expected, np.int16))
        assert diff.max() <= 2 and diff.mean() < 0.5, (trial, diff.max(), diff.mean())


def test_training_transform_resamples_the_crop_as_resize_then_crop() -> None:
    """A training transform that scales a picture above the input size resamples only its random S x S
    crop; its pixels equal the whole picture resized and then cropped at exactly one offset (to 2 levels
    of PIL's rounding; noise pictures match nowhere else)."""
    rng = np.random.default_rng(1)
    S = 64
    transform = build_transform(S, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], train=True, scale_range=(1.5, 2.0))
    transform.hflip_prob = 0.0
    for trial in range(6):
        w, h = int(rng.integers(40, 64)), int(rng.integers(40, 64))
        picture = _noise(rng, w, h)
        box = np.array([[0.0, 0.0, w, h]], np.float32)
        out, boxes, _, scale = transform(picture, box, np.zeros(1, np.int64), torch.Generator().manual_seed(trial))
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        resized = np.asarray(picture.resize((nw, nh), Image.BILINEAR), np.int16)
        got = (out.permute(1, 2, 0) * 255).round().numpy().astype(np.int16)  # std 1 in 0..1 units
        matches = [(x, y) for x in range(nw - min(nw, S) + 1) for y in range(nh - min(nh, S) + 1)
                   if np.abs(resized[y:y + min(nh, S), x:x + min(nw, S)] - got[:min(nh, S), :min(nw, S)]).max() <= 2]
        assert len(matches) == 1, (trial, matches[:5])
