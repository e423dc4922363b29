"""EfficientDet-D0: EfficientNet-B0 + BiFPN 64 ch x 3 layers, head depth 3, 512 x 512 input (phi = 0)."""
from config import base


class General(base.General):
    name = "effdet_b0"


class dataset(base.dataset):
    image_size = 512


class backbone(base.backbone):
    name = "tf_efficientnet_b0"


class neck(base.neck):
    channels = 64
    repeats = 3


class head(base.head):
    repeats = 3
