"""RetinaNet with NAS-FPN (Ghiasi, Lin, Le, 2019): ResNet-50, NAS-FPN 7 @ 256, 640 px.

timm's resnet50, C3-C5 -> 1x1 conv + BN to 256 channels, P6 / P7 by 2x2 max-pools, then 7 NAS-FPN
cells (each the paper's 7 merge blocks: sum / global-attention, ReLU, 3x3 conv, BN) on P3-P7; the
RetinaNet head of ``config/retina_r50_fpn.py`` (4 x 3x3 conv 256 + ReLU, plain, no norm: the
tensorflow/tpu reference adds a BN per level after each head conv, which is not modelled here),
9 anchors of side 4 x stride, focal loss 2.0 / 0.25, box Huber 0.1 x 50.

Recipe (the paper's section 4): SGD lr 0.08 for a batch of 64 (scaled linearly to the real batch),
momentum 0.9, weight decay 1e-4, 50 epochs with the lr x 0.1 at epochs 30 and 40, scale jitter
0.8-1.2, horizontal flips, no EMA. The paper starts from ImageNet weights: add
``--set pretrain.backbone_weights=resnet50``.
"""
from config import base
from config.retina_r50_fpn import anchors, backbone, head, loss  # noqa: F401  (RetinaNet's)


class General(base.General):
    name = "nasfpn_r50"


class schedule(base.schedule):
    end_epoch = 50
    decay = "step"
    lr_steps = [30, 40]
    lr_gamma = 0.1
    warmup_epochs = 0.3
    warmup_factor = 0.1


class optimizer(base.optimizer):
    type = "sgd"
    lr = 0.08
    lr_batch = 64
    momentum = 0.9
    weight_decay = 1e-4
    ema_decay = 0.0


class dataset(base.dataset):
    image_size = 640
    scale_min = 0.8
    scale_max = 1.2


class neck(base.neck):
    type = "nasfpn"
    channels = 256
    repeats = 7
    min_level = 3
    max_level = 7
    padding = ""
