"""YOLOv4 with an EfficientNet-B7 backbone (width x2.0, depth x3.1): the YOLOv4-L neck and heads.

Seed 000, table "修改後的 Yolov4_Efficientnet_b7": timm's ``tf_efficientnet_b7`` features (stem and 7
MBConv stages), EfficientNet's 1x1 head conv + BN + swish to 2560 channels, then SPPCSP and the
YOLOv4-L CSP-PAN with 3 YOLO layers (P3-P5). ``utils.model_summary`` rows: 1856, 10920, 253424,
716068, 3721660, 7615904, 28390712, 21432896, head conv 1643520, SPPCSP 9183232 (the seed's total,
9.11829e+07 parameters, is for its 4 vehicle classes: ``--num-classes 4`` gives it exactly).
Everything but the backbone is ``config/yolov4_effb0.py``.
"""
from config import yolov4_effb0
from config.yolov4_effb0 import dataset, head, neck, optimizer, schedule, test  # noqa: F401  (the same recipe)


class General(yolov4_effb0.General):
    name = "yolov4_effb7"


class backbone(yolov4_effb0.backbone):
    name = "tf_efficientnet_b7"
    head_conv = 2560               # round(1280 x 2.0) to a multiple of 8
