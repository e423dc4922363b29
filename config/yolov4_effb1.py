"""YOLOv4 with an EfficientNet-B1 backbone (width x1.0, depth x1.1): the YOLOv4-L neck and heads.

Seed 000, table "修改後的 Yolov4_Efficientnet_b1": timm's ``tf_efficientnet_b1`` features (stem and 7
MBConv stages), EfficientNet's 1x1 head conv + BN + swish to 1280 channels, then SPPCSP and the
YOLOv4-L CSP-PAN with 3 YOLO layers (P3-P5). ``utils.model_summary`` rows: 928, 2060, 27424, 77930,
345830, 751720, 2614300, 2280832, head conv 412160, SPPCSP 7872512 (the seed's total, 3.25646e+07
parameters, is for its 4 vehicle classes: ``--num-classes 4`` gives it exactly). Everything but the
backbone is ``config/yolov4_effb0.py``.
"""
from config import yolov4_effb0
from config.yolov4_effb0 import dataset, head, neck, optimizer, schedule, test  # noqa: F401  (the same recipe)


class General(yolov4_effb0.General):
    name = "yolov4_effb1"


class backbone(yolov4_effb0.backbone):
    name = "tf_efficientnet_b1"
    head_conv = 1280               # round(1280 x 1.0) to a multiple of 8
