"""YOLOv4 with an EfficientNet-B4 backbone (width x1.4, depth x1.8): the YOLOv4-L neck and heads.

Seed 000, table "修改後的 Yolov4_Efficientnet_b4": timm's ``tf_efficientnet_b4`` features (stem and 7
MBConv stages), EfficientNet's 1x1 head conv + BN + swish to 1792 channels, then SPPCSP and the
YOLOv4-L CSP-PAN with 3 YOLO layers (P3-P5). ``utils.model_summary`` rows: 1392, 4146, 66238,
197586, 1059898, 2306724, 8636228, 4470004, head conv 806400, SPPCSP 8396800 (the seed's total,
4.41386e+07 parameters, is for its 4 vehicle classes: ``--num-classes 4`` gives it exactly).
Everything but the backbone is ``config/yolov4_effb0.py``.
"""
from config import yolov4_effb0
from config.yolov4_effb0 import dataset, head, neck, optimizer, schedule, test  # noqa: F401  (the same recipe)


class General(yolov4_effb0.General):
    name = "yolov4_effb4"


class backbone(yolov4_effb0.backbone):
    name = "tf_efficientnet_b4"
    head_conv = 1792               # round(1280 x 1.4) to a multiple of 8
