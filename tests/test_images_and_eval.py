"""Pictures read the right way up (EXIF orientation), 16-bit pictures scaled to 8 bits, decompression
bombs refused by name, and evaluation that is not biased low (COCO scoring restricted to the evaluated
images, VOC ``difficult`` objects ignored rather than dropped)."""
from __future__ import annotations

import contextlib
import io
import json
import struct
import types
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFile, ImageOps

from core.data.check import check_dataset, load_checked_records
from core.data.dataset import DetectionDataset, load_image
from core.data.records import DatasetError, ImageRecord
from core.data.spec import load_dataset_spec, read_split
from core.data.transforms import build_transform
from core.evaluation.coco_eval import coco_ground_truth, evaluate
from core.ops.postprocess import Detections

DISPLAYED = (160, 96)                 # (w, h) of the picture as a viewer shows it
OBJECT = (20, 12, 70, 52)             # xyxy of the red object in the displayed picture
RED, GREY = (220, 30, 30), (128, 128, 128)
# stored pixels = displayed picture transformed by the inverse of what the orientation asks a viewer to do
INVERSE = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
           4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
           7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}


def _displayed(size: tuple[int, int] = DISPLAYED, box: tuple[int, int, int, int] = OBJECT) -> Image.Image:
    image = Image.new("RGB", size, GREY)
    ImageDraw.Draw(image).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=RED)
    return image


def _oriented_jpeg(path: Path, orientation: int, size: tuple[int, int] = DISPLAYED,
                   box: tuple[int, int, int, int] = OBJECT) -> Path:
    """A JPEG whose stored pixels, shown with EXIF ``orientation``, are the displayed picture."""
    shown = _displayed(size, box)
    stored = shown.transpose(INVERSE[orientation]) if INVERSE[orientation] is not None else shown
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    stored.save(path, quality=95, exif=exif.tobytes())
    with Image.open(path) as im:  # the test's own premise: a viewer shows the displayed picture
        viewed = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.int16)
    assert viewed.shape == (size[1], size[0], 3)
    assert np.abs(viewed - np.asarray(shown, dtype=np.int16)).mean() < 3
    return path


def _red_fraction(pixels: np.ndarray) -> float:
    """Fraction of ``[..., 3]`` 0..255 pixels that are red."""
    r, g, b = pixels[..., 0].astype(float), pixels[..., 1].astype(float), pixels[..., 2].astype(float)
    return float(((r > 170) & (g < 90) & (b < 90)).mean())


def _oriented_dataset(tmp_path: Path, fmt: str, orientation: int, size: tuple[int, int]) -> Path:
    """A one-image dataset (coco or yolo) whose picture has EXIF ``orientation``, annotated as displayed."""
    w, h = size
    box = OBJECT if size == DISPLAYED else (20, 12, 50, 40)
    _oriented_jpeg(tmp_path / "images" / "phone.jpg", orientation, size, box)
    if fmt == "coco":
        x1, y1, x2, y2 = box
        (tmp_path / "ann.json").write_text(json.dumps({
            "images": [{"id": 1, "file_name": "phone.jpg", "width": w, "height": h}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                             "iscrowd": 0, "area": (x2 - x1) * (y2 - y1)}],
            "categories": [{"id": 1, "name": "thing"}]}))
        text = "format: coco\ntrain: {images: images, annotations: ann.json}\n"
    else:
        x1, y1, x2, y2 = box
        (tmp_path / "labels").mkdir()
        (tmp_path / "labels" / "phone.txt").write_text(
            f"0 {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}\n")
        text = "format: yolo\nclasses: [thing]\ntrain: {images: images, labels: labels}\n"
    (tmp_path / "data.yaml").write_text(text)
    return tmp_path / "data.yaml"


# ----------------------------------------------------------------------------- 1. EXIF orientation


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
@pytest.mark.parametrize("orientation,size", [(6, DISPLAYED), (3, (96, 96)), (3, DISPLAYED), (8, DISPLAYED)])
def test_exif_oriented_photo_trains_on_the_annotated_object(tmp_path: Path, fmt: str, orientation: int,
                                                             size: tuple[int, int]) -> None:
    """Annotated as displayed: the start-up check passes and the training target covers the object."""
    spec = load_dataset_spec(_oriented_dataset(tmp_path, fmt, orientation, size))
    assert check_dataset(spec).ok, check_dataset(spec).format()
    records, _ = load_checked_records(spec, ["train"], skip_bad_records=False)  # start-up: no size complaint
    (rec,) = records["train"]
    assert (rec.width, rec.height) == size
    tf = build_transform(128, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), train=False)
    image, target = DetectionDataset([rec], tf)[0]
    pixels = (image * tf.std + tf.mean).permute(1, 2, 0).numpy()  # 0..255, input pixels
    (x1, y1, x2, y2), = target["boxes"].round().int().tolist()
    assert _red_fraction(pixels[y1 + 2:y2 - 2, x1 + 2:x2 - 2]) > 0.95  # the box lies on the red object
    assert _red_fraction(pixels) * pixels.shape[0] * pixels.shape[1] < 1.2 * (x2 - x1) * (y2 - y1)
    # the picture TensorBoard, detection_test --vis and utils.dataset show draw comes from the same reader
    assert load_image(rec).size == size


def test_predict_reads_and_draws_photos_the_right_way_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """utils.predict: the network gets, and --vis draws on, the displayed picture; boxes are in its pixels."""
    import core.inference.predictor as predictor
    from utils.predict import main as predict_main

    paths = [_oriented_jpeg(tmp_path / "in" / f"o{o}.jpg", o) for o in (1, 3, 6, 8)]

    class FakeDetector:  # "detects" the red object in whatever picture it is given
        class_names, category_ids, source = ["thing"], [1], "fake.pt"
        cfg = types.SimpleNamespace(test=types.SimpleNamespace(batch_image=2))

        def predict_many(self, pictures, score_thresh=0.0, tta=None, batch_size=None, tiling=None):
            out = []
            for pic in pictures:
                arr = np.asarray(pic)
                ys, xs = np.nonzero((arr[..., 0] > 170) & (arr[..., 1] < 90) & (arr[..., 2] < 90))
                box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
                out.append(predictor.Prediction(box, np.array([0.9], np.float32), np.array([0]), ["thing"]))
            return out

    monkeypatch.setattr(predictor.Predictor, "from_checkpoint", classmethod(lambda cls, *a, **k: FakeDetector()))
    out_json, vis = tmp_path / "pred.json", tmp_path / "vis"
    assert predict_main([*map(str, paths), "--weights", "fake.pt", "--out", str(out_json), "--vis", str(vis)]) == 0
    rows = json.loads(out_json.read_text())
    assert len(rows) == len(paths)
    for row, path in zip(rows, paths):
        x1, y1, w, h = row["bbox"]
        np.testing.assert_allclose([x1, y1, x1 + w, y1 + h], OBJECT, atol=2, err_msg=path.name)
        with Image.open(vis / f"{path.stem}.png") as im:
            drawn = np.asarray(im.convert("RGB"))
        assert drawn.shape[:2] == (DISPLAYED[1], DISPLAYED[0]), path.name
        assert _red_fraction(drawn[30:46, 32:60]) > 0.95, path.name  # inside the object, below its label


def test_reader_matches_exif_transpose_and_reads_only_the_header_for_the_size(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.data.image_io import image_size, open_image

    for o in range(1, 9):
        path = _oriented_jpeg(tmp_path / f"o{o}.jpg", o)
        with Image.open(path) as im:
            expected = ImageOps.exif_transpose(im).convert("RGB")
        got = open_image(path)
        assert got.mode == "RGB" and got.size == expected.size == DISPLAYED
        assert np.array_equal(np.asarray(got), np.asarray(expected)), o
    for o in range(1, 9):  # TIFF: Pillow 13 turns these itself (size and pixels); turned once either way
        shown = _displayed()
        stored = shown.transpose(INVERSE[o]) if INVERSE[o] is not None else shown
        stored.save(tmp_path / f"o{o}.tif", tiffinfo={0x0112: o})
        got = open_image(tmp_path / f"o{o}.tif")
        assert got.size == DISPLAYED and np.array_equal(np.asarray(got), np.asarray(shown)), o
    png = tmp_path / "o6.png"  # PNG eXIf chunk (before IDAT)
    exif = Image.Exif()
    exif[0x0112] = 6
    _displayed().transpose(Image.Transpose.ROTATE_90).save(png, exif=exif.tobytes())
    assert open_image(png).size == DISPLAYED

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("image_size decoded pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    for o in range(1, 9):
        assert image_size(tmp_path / f"o{o}.jpg") == DISPLAYED, o
        assert image_size(tmp_path / f"o{o}.tif") == DISPLAYED, o
    assert image_size(png) == DISPLAYED


# ----------------------------------------------------------------------------- 2. 16-bit pictures


def _png16(path: Path, values: np.ndarray, color_type: int) -> Path:
    """A 16-bit PNG (color type 0 grey, 2 RGB) written by hand from big-endian ``values`` [H, W(, 3)]."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w = values.shape[:2]
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def test_16_bit_pictures_are_scaled_to_8_bits_not_clipped(tmp_path: Path) -> None:
    from core.inference.predictor import to_pil

    ramp = (np.arange(64, dtype=np.uint32) * 1024 + 0x80).astype(np.uint16)   # 8-bit value = column * 4
    values = np.tile(ramp, (8, 1))
    values[:, :4] = 0x8080                                                        # mid-grey block
    expected = (values >> 8).astype(np.uint8)
    files = {"I;16 png": _png16(tmp_path / "grey16.png", values, 0),
             "RGB 16 png": _png16(tmp_path / "rgb16.png", np.stack([values] * 3, axis=-1), 2)}
    for mode, dtype in (("I;16", np.uint16), ("I;16B", ">u2"), ("I", np.int32)):
        files[f"{mode} tiff"] = tmp_path / f"{mode.replace(';', '_')}.tif"
        stored = Image.fromarray(values.astype(dtype))
        assert stored.mode == mode
        stored.save(files[f"{mode} tiff"])
    for name, path in files.items():
        rec = ImageRecord(1, str(path), 64, 8, np.zeros((0, 4)), np.zeros(0))
        for image in (load_image(rec), to_pil(path)):
            arr = np.asarray(image)
            assert image.mode == "RGB" and arr.shape == (8, 64, 3), name
            assert (arr[:, :4] == 128).all(), (name, arr[0, :4])   # mid-grey, not near-white
            np.testing.assert_array_equal(arr[..., 0], expected, err_msg=name)
            np.testing.assert_array_equal(arr[..., 2], expected, err_msg=name)
    # an in-memory 16-bit picture given to predict
    assert (np.asarray(to_pil(Image.fromarray(values)))[:, :4] == 128).all()


# ----------------------------------------------------------------------------- 3. decompression bombs


def _bomb_png(path: Path, w: int, h: int) -> Path:
    """A tiny PNG whose header declares ``w`` x ``h`` pixels (IHDR patched, CRC fixed)."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


def _dataset_with_bomb(tmp_path: Path, w: int, h: int) -> Path:
    img = tmp_path / "img"
    img.mkdir(exist_ok=True)
    _displayed().save(img / "good.png")
    _bomb_png(img / "bomb.png", w, h)
    (tmp_path / "ann.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "good.png", "width": DISPLAYED[0], "height": DISPLAYED[1]},
                   {"id": 2, "file_name": "bomb.png", "width": w, "height": h}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [20, 12, 50, 40], "iscrowd": 0}],
        "categories": [{"id": 1, "name": "thing"}]}))
    (tmp_path / "data.yaml").write_text("format: coco\ntrain: {images: img, annotations: ann.json}\n")
    return tmp_path / "data.yaml"


@pytest.mark.parametrize("w,h", [(20000, 20000), (15000, 13000)])  # over PIL's error / only its warning limit
def test_decompression_bomb_is_a_dataset_error_naming_the_file(tmp_path: Path, w: int, h: int) -> None:
    from utils.dataset import main as dataset_main

    yaml_path = _dataset_with_bomb(tmp_path, w, h)
    bomb = str((tmp_path / "img" / "bomb.png").resolve())
    assert (tmp_path / "img" / "bomb.png").stat().st_size < 1000
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), warnings.catch_warnings():
        warnings.simplefilter("error")  # no PIL warning escapes either
        code = dataset_main(["check", str(yaml_path)])
    out = buf.getvalue()
    assert code == 1, out
    (line,) = [x for x in out.splitlines() if "bomb.png" in x]
    assert line.strip().startswith("[train] unreadable image:") and bomb in line and "pixels" in line, line

    spec = load_dataset_spec(yaml_path)
    with pytest.raises(DatasetError, match="bomb.png"):  # start-up check
        load_checked_records(spec, ["train"], skip_bad_records=False)
    records, notes = load_checked_records(spec, ["train"], skip_bad_records=False, skip_bad_images=True)
    assert len(records["train"]) == 2 and any("bomb.png" in n for n in notes)

    # the loader: an error naming the file, or a skipped (None) item with skip_bad_images
    tf = build_transform(64, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), train=False)
    bomb_rec = [r for r in records["train"] if r.file_name == bomb][0]
    with pytest.raises(DatasetError, match="bomb.png"):
        DetectionDataset([bomb_rec], tf)[0]
    dataset = DetectionDataset(records["train"], tf, skip_bad=True)
    with pytest.warns(UserWarning, match="bomb.png"):
        items = [dataset[i] for i in range(len(dataset))]
    assert sum(item is None for item in items) == 1
    # a YOLO split reads sizes in strict mode too
    (tmp_path / "labels").mkdir()
    (tmp_path / "y.yaml").write_text("format: yolo\nclasses: [thing]\ntrain: {images: img, labels: labels}\n")
    with pytest.raises(DatasetError, match="bomb.png"):
        read_split(load_dataset_spec(tmp_path / "y.yaml"), "train")


# ----------------------------------------------------------------------------- 4. evaluation


def _coco_two_images(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    for name in ("a.png", "b.png"):
        _displayed().save(tmp_path / "img" / name)
    (tmp_path / "val.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 160, "height": 96},
                   {"id": 2, "file_name": "b.png", "width": 160, "height": 96}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [20, 12, 50, 40], "area": 2000,
                         "iscrowd": 0},
                        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [20, 12, 50, 40], "area": 2000,
                         "iscrowd": 0}],
        "categories": [{"id": 1, "name": "thing"}]}))
    (tmp_path / "data.yaml").write_text("format: coco\nval: {images: img, annotations: val.json}\n")
    return tmp_path / "data.yaml"


def test_coco_scoring_is_restricted_to_the_evaluated_images(tmp_path: Path) -> None:
    from core.engine.inference import evaluate_detections

    spec = load_dataset_spec(_coco_two_images(tmp_path))
    records = read_split(spec, "val")
    perfect = [{"image_id": 1, "category_id": 1, "bbox": [20, 12, 50, 40], "score": 0.9}]
    # image 2 left out of the records (skip_bad_records): not in the ground truth
    result = evaluate(coco_ground_truth(spec, "val", records[:1]), perfect)
    assert result.stats["AP"] == pytest.approx(1.0) and result.stats["AR100"] == pytest.approx(1.0)
    # image 2 in the records but skipped by the loader (skip_bad_images): no detections entry, not scored
    dets = {1: Detections(torch.tensor([[20.0, 12.0, 70.0, 52.0]]), torch.tensor([0.9]), torch.tensor([0]))}
    result, _ = evaluate_detections(dets, coco_ground_truth(spec, "val", records), ["thing"], [1])
    assert result.stats["AP"] == pytest.approx(1.0)
    # both evaluated, one missed: the miss still counts
    dets[2] = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    result, _ = evaluate_detections(dets, coco_ground_truth(spec, "val", records), ["thing"], [1])
    assert result.stats["AR100"] == pytest.approx(0.5)


def _voc_with_difficult(tmp_path: Path) -> Path:
    (tmp_path / "JPEGImages").mkdir()
    _displayed((100, 80)).save(tmp_path / "JPEGImages" / "x.png")
    (tmp_path / "Annotations").mkdir()
    obj = ("<object><name>cat</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
           "<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>")
    (tmp_path / "Annotations" / "000001.xml").write_text(
        "<annotation><filename>x.png</filename><size><width>100</width><height>80</height><depth>3</depth></size>"
        + obj.format(d=0, b=(11, 11, 50, 40)) + obj.format(d=1, b=(61, 41, 90, 70)) + "</annotation>")
    (tmp_path / "data.yaml").write_text("format: voc\nclasses: [cat]\n"
                                        "val: {images: JPEGImages, annotations: Annotations}\n")
    return tmp_path / "data.yaml"


def test_voc_difficult_objects_are_ignored_not_dropped(tmp_path: Path) -> None:
    spec = load_dataset_spec(_voc_with_difficult(tmp_path))
    (rec,) = read_split(spec, "val")
    gt = coco_ground_truth(spec, "val", [rec])
    normal = {"image_id": rec.image_id, "category_id": 1, "bbox": [10, 10, 40, 30], "score": 0.9}
    on_difficult = {"image_id": rec.image_id, "category_id": 1, "bbox": [60, 40, 30, 30], "score": 0.95}
    base = evaluate(gt, [normal])
    assert base.stats["AP"] == pytest.approx(1.0) and base.stats["AR100"] == pytest.approx(1.0)  # no miss
    with_difficult = evaluate(gt, [normal, on_difficult])                                      # no false positive
    assert with_difficult.stats["AP"] == pytest.approx(1.0)
    del with_difficult.stats["AR1"], base.stats["AR1"]  # 1 detection per image: the higher-scored difficult one
    assert with_difficult.stats == pytest.approx(base.stats)
    np.testing.assert_allclose(with_difficult.precision[..., -1], base.precision[..., -1])  # 100 per image
    # a detection elsewhere is still a false positive (its score is above the true one)
    elsewhere = {**on_difficult, "bbox": [0, 50, 20, 20]}
    assert evaluate(gt, [normal, elsewhere]).stats["AP"] < 0.9
    # not a training target
    tf = build_transform(64, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), train=False)
    _, target = DetectionDataset([rec], tf)[0]
    assert len(target["boxes"]) == 1 and target["boxes"][0, 0] < 32
    np.testing.assert_allclose(rec.boxes, [[10, 10, 50, 40]])
