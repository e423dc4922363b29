"""EfficientDet-D5: EfficientNet-B5 + BiFPN 288 ch x 7 layers, head depth 4, 1280 x 1280 input (phi = 5)."""
from config import base


class General(base.General):
    name = "effdet_b5"


class dataset(base.dataset):
    image_size = 1280


class backbone(base.backbone):
    name = "tf_efficientnet_b5"


class neck(base.neck):
    channels = 288
    repeats = 7


class head(base.head):
    repeats = 4
