"""YOLOv4 with an EfficientNet-B5 backbone (width x1.6, depth x2.2): the YOLOv4-L neck and heads.

Seed 000, table "修改後的 Yolov4_Efficientnet_b5": timm's ``tf_efficientnet_b5`` features (stem and 7
MBConv stages), EfficientNet's 1x1 head conv + BN + swish to 2048 channels, then SPPCSP and the
YOLOv4-L CSP-PAN with 3 YOLO layers (P3-P5). ``utils.model_summary`` rows: 1392, 5352, 122846,
329514, 1632464, 3286344, 12165292, 9744908, head conv 1052672, SPPCSP 8658944 (the seed's total,
5.51981e+07 parameters, is for its 4 vehicle classes: ``--num-classes 4`` gives it exactly).
Everything but the backbone is ``config/yolov4_effb0.py``.
"""
from config import yolov4_effb0
from config.yolov4_effb0 import dataset, head, neck, optimizer, schedule, test  # noqa: F401  (the same recipe)


class General(yolov4_effb0.General):
    name = "yolov4_effb5"


class backbone(yolov4_effb0.backbone):
    name = "tf_efficientnet_b5"
    head_conv = 2048               # round(1280 x 1.6) to a multiple of 8
