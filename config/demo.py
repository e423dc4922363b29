"""The demo experiment: EfficientDet-D0's architecture on the bundled synthetic shapes, sized for a CPU.

EfficientNet-B0 + BiFPN (64 ch x 3) + heads (depth 3) on 256 x 256 inputs, trained from random
initialisation with AdamW for a few minutes on 2 CPU cores.
"""
from config import base


class General(base.General):
    name = "demo"
    batch_image = 8
    loader_worker = 1
    log_frequency = 5


class schedule(base.schedule):
    end_epoch = 10
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
    scale_min = 0.8
    scale_max = 1.2


class backbone(base.backbone):
    drop_path_rate = 0.0


class anchors(base.anchors):
    scale = 2.0                  # smallest anchor 16 px: the demo's objects start at 12 px in 256 px images


class test(base.test):
    batch_image = 16
