"""EfficientDet at phi = 7 with an EfficientNet-B7 backbone: BiFPN 384 ch x 8, head depth 5, 1536 x 1536.

The paper's D7 keeps the B6 backbone (its width and depth stop growing after D6) and effdet's
D7x adds a P8 level; this is neither: it is the B7 backbone under D7's neck, head and input size.
"""
from config import base


class General(base.General):
    name = "effdet_b7"


class dataset(base.dataset):
    image_size = 1536


class backbone(base.backbone):
    name = "tf_efficientnet_b7"


class neck(base.neck):
    channels = 384
    repeats = 8


class head(base.head):
    repeats = 5
