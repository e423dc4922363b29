"""Fine-tune EfficientDet-Lite0 on a small dataset of your own (tens to a few thousand pictures).

Start here when you bring your own photos: ``--data my.yaml`` and the number of epochs are all it
needs. The backbone starts from the ImageNet EfficientNet-Lite0 weights that ``requirements.txt``
installs (no download). The recipe fields stay at ``"auto"`` (``core/engine/recipe.py``): a run of
up to 10 000 steps trains with AdamW at 1e-3, BatchNorm momentum up to 0.1, a short warmup and
0.8-1.2 scale jitter, and each choice is printed with its reason. On top of effdet_lite0, this
config changes three things:

* 384 px inputs, for the small objects own data often has;
* an evaluation every epoch, with the best kept as ``best.pt``;
* early stopping after 10 evaluations without a better AP (``schedule.patience``).

    python detection_train.py --config config/finetune_lite0.py --data my.yaml --set schedule.end_epoch=60
    python detection_test.py --config config/finetune_lite0.py --data my.yaml --weights best

The anchors stay effdet_lite0's. The trainer prints how many training boxes they match and the
``--set`` line that would fit better. ``anchors.auto`` is left off: with it (fitted scale 2.0) this
config reached AP50 0.09 on one real tree-crown set where effdet_lite0 at 320 px reached 0.18. The
two changes were not measured apart.
"""
from config import base, effdet_lite0


class General(effdet_lite0.General):
    name = "finetune_lite0"


class schedule(base.schedule):
    end_epoch = 60
    eval_every = 1
    patience = 10


class dataset(effdet_lite0.dataset):
    image_size = 384


class backbone(effdet_lite0.backbone):
    pass


class neck(effdet_lite0.neck):
    pass


class head(effdet_lite0.head):
    pass


class anchors(effdet_lite0.anchors):
    pass


class pretrain(effdet_lite0.pretrain):
    pass
