"""enet4y2 (seed 003's 4 YOLO layers on P2-P5) on EfficientNet-Lite0 that starts from ImageNet weights
offline: ``config/enet4y2.py``'s neck, anchors and objectness balance on the backbone of
``config/yolov4_lite0.py`` (``pkg:`` Lite0 weights, mean = std = 0.5, no 1x1 head conv), at 416 px
with the automatic recipe. With ``config/yolov4_lite0.py`` (3 layers, P3-P5) it is the seeds'
"2, 3 or 4 YOLO layers" comparison on your own data:

    python -m utils.compare config/yolov4_lite0.py config/enet4y2_lite0.py --data my.yaml --epochs 60
"""
from config import enet4y2, yolov4_lite0
from config.enet4y2 import anchors, loss  # noqa: F401  (4 layers' anchors and objectness balance)
from config.yolov4_lite0 import dataset, head, pretrain, test  # noqa: F401


class General(yolov4_lite0.General):
    name = "enet4y2_lite0"


class backbone(yolov4_lite0.backbone):
    out_levels = [2, 3, 4, 5]


class neck(enet4y2.neck):
    pass
