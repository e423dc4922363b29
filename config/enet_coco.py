"""enet-coco: EfficientNet-B0 with 2 YOLO layers (P4, P5) at 416 x 416, after darknet's enet-coco.cfg.

AlexeyAB darknet's ``enet-coco.cfg`` (the reference detector of seed 003): EfficientNet-B0 with its
1x1 head conv to 1280 channels (swish), a light head of 256 channels at stride 32 and 128 at
stride 16, and two YOLO layers sharing the six "tiny" anchors 10,14 23,27 37,58 81,82 135,169
344,319 (masks 3,4,5 at P5 and 1,2,3 at P4, in pixels of the 416 input). Here the head is this
repository's YOLO neck at those widths (SPPCSP 1280 -> 256 on P5, one CSP-PAN step to P4 at 128,
one bottleneck per CSP block) and the loss of ``core.tasks.yolo``; the recipe is ``config/yolov4_effb0.py``'s.
"""
from config import base, yolov4_effb0
from config.yolov4_effb0 import head, optimizer, schedule, test  # noqa: F401  (the same recipe)


class General(yolov4_effb0.General):
    name = "enet_coco"


class dataset(yolov4_effb0.dataset):
    image_size = 416


class backbone(yolov4_effb0.backbone):
    name = "tf_efficientnet_b0"
    out_levels = [4, 5]
    head_conv = 1280


class neck(yolov4_effb0.neck):
    min_level = 4
    max_level = 5
    pan_channels = 256
    pan_repeats = 1


class anchors(base.anchors):
    yolo = [[23, 27, 37, 58, 81, 82],            # P4 / 16 (darknet mask 1,2,3)
            [81, 82, 135, 169, 344, 319]]        # P5 / 32 (darknet mask 3,4,5)


class loss(base.loss):
    yolo_obj_balance = [1.0, 0.4]                # the P4, P5 weights of the 3-layer [4.0, 1.0, 0.4]
