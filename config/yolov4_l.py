"""YOLOv4-L (Mish): CSP-Darknet53 + SPPCSP + CSP-PAN + 3 YOLO layers (P3-P5), 640 x 640 input.

PyTorch_YOLOv4's u5-branch ``yolov4l-mish.yaml`` (depth_multiple 1.0, width_multiple 1.0). The
backbone and SPPCSP rows of ``python -m utils.model_summary --config config/yolov4_l.py
--num-classes 80`` follow the "原始的 Yolov4_L" table of seed 000 (and 001) row by row:
928, 18560, 20672, 73984, 119936, 295424, 1463552, 1180672, 5843456, 4720640, 12858368 and
SPPCSP 7610368. With the CSP-PAN and the YOLO layers the network has 52,515,505 parameters for
the seed's 4 vehicle classes (its "5.25155e+07") and 52,924,765 for the 80 COCO classes.

Recipe of the reference (``train.py`` hyps): SGD lr 0.01, momentum 0.937, weight decay 5e-4,
3 warmup epochs, cosine decay to 0.2 x lr over 300 epochs, scale jitter 0.5-1.5, inputs in 0..1
(no mean / std), CIoU + objectness + class BCE with the YOLOv4 COCO anchors (``config/base.py``).
"""
from config import base


class General(base.General):
    name = "yolov4_l"


class schedule(base.schedule):
    end_epoch = 300
    warmup_epochs = 3.0
    min_lr_ratio = 0.2


class optimizer(base.optimizer):
    type = "sgd"
    lr = 0.01
    lr_batch = 64
    momentum = 0.937
    weight_decay = 5e-4
    ema_decay = 0.9999


class dataset(base.dataset):
    image_size = 640
    mean = [0.0, 0.0, 0.0]
    std = [1.0, 1.0, 1.0]
    scale_min = 0.5
    scale_max = 1.5


class backbone(base.backbone):
    type = "csp_darknet"
    name = "cspdarknet53"
    out_levels = [3, 4, 5]
    drop_path_rate = 0.0
    depth_multiple = 1.0
    width_multiple = 1.0


class neck(base.neck):
    type = "yolo_pan"
    min_level = 3
    max_level = 5
    pan_channels = 512
    pan_repeats = 2


class head(base.head):
    type = "yolo"


class test(base.test):
    nms_thresh = 0.65
