"""EfficientDet-D4: EfficientNet-B4 + BiFPN 224 ch x 7 layers, head depth 4, 1024 x 1024 input (phi = 4)."""
from config import base


class General(base.General):
    name = "effdet_b4"


class dataset(base.dataset):
    image_size = 1024


class backbone(base.backbone):
    name = "tf_efficientnet_b4"


class neck(base.neck):
    channels = 224
    repeats = 7


class head(base.head):
    repeats = 4
