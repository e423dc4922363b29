"""enet4y2: EfficientNet-B0 with 4 YOLO layers (P2-P5) at 416 x 416, after seed 003's enet4y2-coco.cfg.

Seed 003 ("B0-4Y"): darknet's enet-coco (``config/enet_coco.py``) with two more YOLO layers, at
strides 8 and 4, on the same EfficientNet-B0 (+ 1x1 head conv to 1280) backbone; 47.1 AP50 on COCO
5K. Its head widens 32, 64, 128, 256 channels from P2 to P5 and its four YOLO layers take three of
the six "tiny" anchors each (masks 0,1,2 / 1,2,3 / 2,3,4 / 3,4,5 from P2 up, pixels of the 416
input). Here: this repository's YOLO neck at those widths (SPPCSP 1280 -> 256 on P5, CSP-PAN down to
P2, one bottleneck per CSP block), the loss of ``core.tasks.yolo`` with YOLOv5's 4-layer objectness balance,
``config/yolov4_effb0.py``'s recipe.
"""
from config import base, yolov4_effb0
from config.yolov4_effb0 import head, optimizer, schedule, test  # noqa: F401  (the same recipe)


class General(yolov4_effb0.General):
    name = "enet4y2"


class dataset(yolov4_effb0.dataset):
    image_size = 416


class backbone(yolov4_effb0.backbone):
    name = "tf_efficientnet_b0"
    out_levels = [2, 3, 4, 5]
    head_conv = 1280


class neck(yolov4_effb0.neck):
    min_level = 2
    max_level = 5
    pan_channels = 256
    pan_repeats = 1


class anchors(base.anchors):
    yolo = [[10, 14, 23, 27, 37, 58],            # P2 / 4  (darknet mask 0,1,2)
            [23, 27, 37, 58, 81, 82],            # P3 / 8  (mask 1,2,3)
            [37, 58, 81, 82, 135, 169],          # P4 / 16 (mask 2,3,4)
            [81, 82, 135, 169, 344, 319]]        # P5 / 32 (mask 3,4,5)


class loss(base.loss):
    yolo_obj_balance = [4.0, 1.0, 0.25, 0.06]    # YOLOv5's weights for 4 output layers, finest first
