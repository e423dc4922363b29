"""YOLOv4 with an EfficientNet-B6 backbone (width x1.8, depth x2.6): the YOLOv4-L neck and heads.

Seed 000, table "修改後的 Yolov4_Efficientnet_b6": timm's ``tf_efficientnet_b6`` features (stem and 7
MBConv stages), EfficientNet's 1x1 head conv + BN + swish to 2304 channels, then SPPCSP and the
YOLOv4-L CSP-PAN with 3 YOLO layers (P3-P5). ``utils.model_summary`` rows: 1624, 8094, 156922,
493444, 2379438, 4840930, 19186878, 12336662, head conv 1331712, SPPCSP 8921088 (the seed's total,
6.78623e+07 parameters, is for its 4 vehicle classes: ``--num-classes 4`` gives it exactly).
Everything but the backbone is ``config/yolov4_effb0.py``.
"""
from config import yolov4_effb0
from config.yolov4_effb0 import dataset, head, neck, optimizer, schedule, test  # noqa: F401  (the same recipe)


class General(yolov4_effb0.General):
    name = "yolov4_effb6"


class backbone(yolov4_effb0.backbone):
    name = "tf_efficientnet_b6"
    head_conv = 2304               # round(1280 x 1.8) to a multiple of 8
