"""RetinaNet ResNet-50-FPN (Lin et al., "Focal Loss for Dense Object Detection", 2017) at 640 px, 1x schedule.

timm's resnet50, C3-C5 -> FPN of 256 channels on P3-P7 (lateral 1x1 convs, nearest top-down + add,
3x3 output convs; P6 = 3x3/2 conv on C5, P7 = 3x3/2 conv on ReLU(P6)); class and box subnets shared
over levels, each 4 x (3x3 conv 256 + ReLU) and a 3x3 predictor (``head.type = "retina"``); 9
anchors per cell (octave scales 2^0, 2^(1/3), 2^(2/3) x aspect ratios 1:2, 1:1, 2:1, side 4 x
stride); focal loss gamma 2.0, alpha 0.25, positives at IoU >= 0.5, background below 0.4; box loss
Huber 0.1 x 50 on unscaled Faster R-CNN offsets (as tensorflow/tpu's RetinaNet).

Recipe: SGD lr 0.01 for a batch of 16 (scaled linearly to the real batch), momentum 0.9, weight
decay 1e-4, 12 epochs with the lr x 0.1 at epochs 8 and 11, short linear warmup from lr / 3, no
EMA, horizontal flips and no scale jitter. With 80 classes the network has 37,968,692 parameters
(torchvision's retinanet_resnet50_fpn: 34,068,119 with 91 classes and P6 made from P5; the
difference is exactly those two choices, see tests/test_necks.py). The paper starts from ImageNet
weights: add ``--set pretrain.backbone_weights=resnet50`` (timm's weights, hub or cache).
"""
import math

from config import base


class General(base.General):
    name = "retina_r50_fpn"


class schedule(base.schedule):
    end_epoch = 12
    decay = "step"
    lr_steps = [8, 11]
    lr_gamma = 0.1
    warmup_epochs = 0.07         # Detectron: 500 iterations of 7330 (COCO at batch 16)
    warmup_factor = 1.0 / 3


class optimizer(base.optimizer):
    type = "sgd"
    lr = 0.01
    lr_batch = 16
    momentum = 0.9
    weight_decay = 1e-4
    ema_decay = 0.0


class dataset(base.dataset):
    image_size = 640
    scale_min = 1.0
    scale_max = 1.0


class backbone(base.backbone):
    type = "timm"
    name = "resnet50"
    out_levels = [3, 4, 5]
    drop_path_rate = 0.0
    head_conv = 0


class neck(base.neck):
    type = "fpn"
    channels = 256
    min_level = 3
    max_level = 7
    padding = ""


class head(base.head):
    type = "retina"
    repeats = 4


class anchors(base.anchors):
    scale = 4.0
    num_scales = 3
    aspect_ratios = [[1.0, 1.0], [math.sqrt(2.0), math.sqrt(0.5)], [math.sqrt(0.5), math.sqrt(2.0)]]


class loss(base.loss):
    focal_alpha = 0.25
    focal_gamma = 2.0
    match_iou = 0.5
    ignore_iou = 0.4
