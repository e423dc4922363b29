"""EfficientDet-D2: EfficientNet-B2 + BiFPN 112 ch x 5 layers, head depth 3, 768 x 768 input (phi = 2)."""
from config import base


class General(base.General):
    name = "effdet_b2"


class dataset(base.dataset):
    image_size = 768


class backbone(base.backbone):
    name = "tf_efficientnet_b2"


class neck(base.neck):
    channels = 112
    repeats = 5


class head(base.head):
    repeats = 3
