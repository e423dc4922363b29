"""EfficientDet-D1: EfficientNet-B1 + BiFPN 88 ch x 4 layers, head depth 3, 640 x 640 input (phi = 1)."""
from config import base


class General(base.General):
    name = "effdet_b1"


class dataset(base.dataset):
    image_size = 640


class backbone(base.backbone):
    name = "tf_efficientnet_b1"


class neck(base.neck):
    channels = 88
    repeats = 4


class head(base.head):
    repeats = 3
