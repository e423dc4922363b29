"""EfficientDet-D3: EfficientNet-B3 + BiFPN 160 ch x 6 layers, head depth 4, 896 x 896 input (phi = 3)."""
from config import base


class General(base.General):
    name = "effdet_b3"


class dataset(base.dataset):
    image_size = 896


class backbone(base.backbone):
    name = "tf_efficientnet_b3"


class neck(base.neck):
    channels = 160
    repeats = 6


class head(base.head):
    repeats = 4
