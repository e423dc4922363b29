"""EfficientDet-D6: EfficientNet-B6 + BiFPN 384 ch x 8 layers, head depth 5, 1280 x 1280 input (phi = 6)."""
from config import base


class General(base.General):
    name = "effdet_b6"


class dataset(base.dataset):
    image_size = 1280


class backbone(base.backbone):
    name = "tf_efficientnet_b6"


class neck(base.neck):
    channels = 384
    repeats = 8


class head(base.head):
    repeats = 5
