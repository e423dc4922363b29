"""YOLOv4 with an EfficientNet-B2 backbone (width x1.1, depth x1.2): the YOLOv4-L neck and heads.

Seed 000, table "修改後的 Yolov4_Efficientnet_b2": timm's ``tf_efficientnet_b2`` features (stem and 7
MBConv stages), EfficientNet's 1x1 head conv + BN + swish to 1408 channels, then SPPCSP and the
YOLOv4-L CSP-PAN with 3 YOLO layers (P3-P5). ``utils.model_summary`` rows: 928, 2060, 27424, 103134,
421550, 862768, 3048878, 2735820, head conv 498432, SPPCSP 8003584 (the seed's total, 3.38865e+07
parameters, is for its 4 vehicle classes: ``--num-classes 4`` gives it exactly). Everything but the
backbone is ``config/yolov4_effb0.py``.
"""
from config import yolov4_effb0
from config.yolov4_effb0 import dataset, head, neck, optimizer, schedule, test  # noqa: F401  (the same recipe)


class General(yolov4_effb0.General):
    name = "yolov4_effb2"


class backbone(yolov4_effb0.backbone):
    name = "tf_efficientnet_b2"
    head_conv = 1408               # round(1280 x 1.1) to a multiple of 8
