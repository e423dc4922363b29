"""RetinaNet ResNet-18-FPN: ``config/retina_r50_fpn.py`` (FPN 256 on P3-P7, 4 x 3x3 conv 256 subnets,
9 anchors, focal loss 2.0 / 0.25, SGD 0.01 at batch 16, 640 px, 1x schedule) on timm's resnet18.

C3-C5 have 128, 256 and 512 channels, so P6 is a 3x3/2 conv on the 512-channel C5.
"""
from config import retina_r50_fpn
from config.retina_r50_fpn import anchors, dataset, head, loss, neck, optimizer, schedule  # noqa: F401  (same recipe)


class General(retina_r50_fpn.General):
    name = "retina_r18_fpn"


class backbone(retina_r50_fpn.backbone):
    name = "resnet18"
