"""RetinaNet with NAS-FPN 7 @ 256 on an EfficientNet-B0 backbone, 640 px.

``config/nasfpn_r50.py`` (7 NAS-FPN cells of 256 channels on P3-P7, RetinaNet head 4 x 3x3 conv 256,
9 anchors, focal loss, SGD 0.08 at batch 64, 50 epochs, scale jitter 0.8-1.2) with timm's
tf_efficientnet_b0 (TF "SAME" padding, stochastic depth 0.2) in place of ResNet-50: its C3-C5
(40, 112, 320 channels) are brought to 256 by 1x1 conv + BN, P6 / P7 are max-pools of P5. The
backbone is small here, so the neck and head hold most of the parameters. For ImageNet weights add
``--set pretrain.backbone_weights=tf_efficientnet_b0``.
"""
from config import nasfpn_r50
from config.nasfpn_r50 import anchors, dataset, head, loss, neck, optimizer, schedule  # noqa: F401  (same recipe)


class General(nasfpn_r50.General):
    name = "nasfpn_effb0"


class backbone(nasfpn_r50.backbone):
    name = "tf_efficientnet_b0"
    drop_path_rate = 0.2
