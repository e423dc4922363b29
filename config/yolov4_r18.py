"""YOLOv4 with a ResNet-18 backbone (BasicBlock x 2, 2, 2, 2): the YOLOv4-L neck and heads on timm's
resnet18.

Seed 001, table "修改後的 Yolov4_resnet18": ResNet-18's stem (7x7 conv 9408, BN 128, ReLU, max-pool) and
layer1-4 (147968, 525568, 2099712, 8393728) replace the CSP-Darknet of ``config/yolov4_l.py``;
SPPCSP (512 -> 512, 7086080), the CSP-PAN and 3 YOLO layers (P3-P5) follow (the seed's total,
3.64896e+07 parameters, is for its 4 vehicle classes: ``--num-classes 4`` gives it exactly). Recipe
as ``config/yolov4_effb0.py`` (ImageNet mean / std).
"""
from config import yolov4_effb0
from config.yolov4_effb0 import dataset, head, neck, optimizer, schedule, test  # noqa: F401  (the same recipe)


class General(yolov4_effb0.General):
    name = "yolov4_r18"


class backbone(yolov4_effb0.backbone):
    name = "resnet18"
    drop_path_rate = 0.0
    head_conv = 0
