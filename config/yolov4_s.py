"""YOLOv4-S (Mish): YOLOv4-L scaled to depth 0.33 and width 0.5, 3 YOLO layers (P3-P5), 640 x 640.

PyTorch_YOLOv4's u5-branch ``yolov4s-mish.yaml``. The backbone and SPPCSP rows of
``utils.model_summary`` follow the "原始的 Yolov4_S" table of seed 000 (and 001): 464, 4672, 5216,
18560, 19904, 73984, 161152, 295424, 641792, 1180672, 1248768 and SPPCSP 1904640; 9,124,609
parameters in all for the seed's 4 vehicle classes (its "9.12461e+06"), 9,329,581 for 80 classes.
Same recipe as ``config/yolov4_l.py``.
"""
from config import yolov4_l
from config.yolov4_l import dataset, head, optimizer, schedule, test  # noqa: F401  (the same recipe)


class General(yolov4_l.General):
    name = "yolov4_s"


class backbone(yolov4_l.backbone):
    depth_multiple = 0.33
    width_multiple = 0.5


class neck(yolov4_l.neck):
    pan_channels = 256          # 512 x width 0.5
    pan_repeats = 1             # round(2 x depth 0.33)
