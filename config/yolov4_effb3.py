"""YOLOv4 with an EfficientNet-B3 backbone (width x1.2, depth x1.4): the YOLOv4-L neck and heads.

Seed 000, table "修改後的 Yolov4_Efficientnet_b3": timm's ``tf_efficientnet_b3`` features (stem and 7
MBConv stages), EfficientNet's 1x1 head conv + BN + swish to 1536 channels, then SPPCSP and the
YOLOv4-L CSP-PAN with 3 YOLO layers (P3-P5). ``utils.model_summary`` rows: 1160, 3504, 48118,
110912, 638700, 1387760, 4628964, 3284218, head conv 592896, SPPCSP 8134656 (the seed's total,
3.7017e+07 parameters, is for its 4 vehicle classes: ``--num-classes 4`` gives it exactly).
Everything but the backbone is ``config/yolov4_effb0.py``.
"""
from config import yolov4_effb0
from config.yolov4_effb0 import dataset, head, neck, optimizer, schedule, test  # noqa: F401  (the same recipe)


class General(yolov4_effb0.General):
    name = "yolov4_effb3"


class backbone(yolov4_effb0.backbone):
    name = "tf_efficientnet_b3"
    head_conv = 1536               # round(1280 x 1.2) to a multiple of 8
