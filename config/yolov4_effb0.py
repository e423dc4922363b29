"""YOLOv4 with an EfficientNet-B0 backbone: the YOLOv4-L neck and heads on timm's tf_efficientnet_b0.

Seed 000, table "修改後的 Yolov4_Efficientnet_b0": the CSP-Darknet of ``config/yolov4_l.py`` is replaced
by EfficientNet-B0's stem and 7 MBConv stages (timm, TF "SAME" padding as the seed's
``get_same_padding_conv2d``), plus EfficientNet's 1x1 head conv + BN + swish 320 -> 1280 (the seed's
``CBS`` row 8), then SPPCSP (1280 -> 512), the CSP-PAN and 3 YOLO layers (P3-P5).
``utils.model_summary`` rows: 928, 1448, 16714, 46640, 242930, 543148, 2026348, 717232, head conv
412160, SPPCSP 7872512 (the seed's total, 3.0059e+07 parameters, is for its 4 vehicle classes:
``--num-classes 4`` gives it exactly).

Recipe as YOLOv4-L (SGD 0.01, momentum 0.937, weight decay 5e-4, warmup, 640 px) but with ImageNet
mean / std, which timm's EfficientNet weights expect (``backbone.pretrained``).
"""
from config import base
from config.yolov4_l import head, neck, optimizer, schedule, test  # noqa: F401  (the same recipe)


class General(base.General):
    name = "yolov4_effb0"


class dataset(base.dataset):
    image_size = 640
    scale_min = 0.5
    scale_max = 1.5


class backbone(base.backbone):
    type = "timm"
    name = "tf_efficientnet_b0"
    out_levels = [3, 4, 5]
    drop_path_rate = 0.2
    head_conv = 1280
