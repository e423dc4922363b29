"""Every config field DetLab knows, with its default. Experiments subclass these sections.

The defaults describe EfficientDet-D0 (EfficientNet-B0 + 3 BiFPN layers of 64 channels,
512x512 input) trained with the paper's recipe scaled to a small batch. An experiment module
such as ``config/effdet_b2.py`` overrides only what differs. A field not declared here, or by a
registered part, is an error (see ``core.config.loading``).

A field that only one backbone, neck, head or head family reads is declared next to that part's
code, in the options class it registers with (``symbol/neck/yolo_pan.py``: ``pan_channels``,
``pan_repeats``; ``core/tasks/yolo.py``: the ``loss.yolo_*`` gains); ``options=`` below joins them
to their section, where experiments and ``--set`` use them like the fields declared here.
"""
import core.tasks.task  # noqa: F401  (registers the head families' tasks and their loss options)
import symbol.builder  # noqa: F401  (registers every backbone, neck and head, and their options)
from core.config.schema import Auto, Section
from core.tasks.registry import TASKS
from symbol.registry import BACKBONES, HEADS, NECKS


class General(Section):
    name = ""                    # run folder name under work_dir; "" = the config file's name
                                 # (config/effdet_b2.py -> runs/effdet_b2), so two configs never share a folder
    work_dir = "runs"            # runs are written to work_dir/name
    batch_image = Auto(int)      # images per device (per process) in one forward pass; auto: 8, or 4 for a
                                 # training set that gives fewer than 16 steps an epoch at 8
    accumulate = 1               # forward passes per optimizer step: the step sees batch_image x accumulate
                                 # images per process, and lr and EMA follow that batch (see README)
    precision = "bf16"           # GPU autocast: bf16 | fp16 (with loss scaling) | fp32; CPUs always run fp32
    compile = False              # torch.compile the network for training and testing (slow first steps)
    loader_worker = 2            # DataLoader worker processes
    log_frequency = 10           # steps between progress-bar / log lines
    seed = 0
    deterministic = False        # deterministic algorithms and data order (exact resume on CPU)
    device = "auto"              # auto | cpu | cuda
    keep_checkpoints = 5         # newest epoch checkpoints kept in the run folder (0 = all)
    sync_bn = False              # SyncBatchNorm across processes (GPU runs under torchrun)
    bn_momentum = Auto(float)    # weight of each batch in BatchNorm running statistics; auto: from the run's steps
                                 # (short runs need more, or evaluation sees stale statistics)


class schedule(Section):
    mult = 1                     # SimpleDet's multiplier: the trainer scales the epochs, lr_steps and warmup by it
    begin_epoch = 0
    end_epoch = 300
    warmup_epochs = Auto(float)  # linear warmup from warmup_factor * lr; auto: from the run's steps
    warmup_factor = 0.001
    decay = "cosine"             # cosine | step
    lr_steps = [200, 250]        # epochs at which `step` decay multiplies the lr by lr_gamma
    lr_gamma = 0.1
    min_lr_ratio = 0.0           # cosine floor as a fraction of the base lr
    eval_every = 1               # epochs between evaluations on the val split (0 = never)
    best_metric = "AP"           # evaluation stat whose best value is kept as best.pt (AP, AP50, APs, ...)
    patience = 0                 # stop after this many evaluations without a better best_metric (0 = never)


class optimizer(Section):
    type = Auto(str)             # sgd | adamw; auto: AdamW for short runs, SGD for long ones (core.engine.recipe)
    lr = Auto(float)             # learning rate for a total batch of lr_batch images; auto: by optimizer
    lr_batch = 16                # the lr is scaled linearly to the real total batch (all processes), as SimpleDet
    momentum = 0.9
    weight_decay = 4e-5
    clip_grad_norm = 10.0        # 0 = no clipping
    ema_decay = 0.9998           # EMA of weights used for evaluation (0 = off)


class dataset(Section):
    data = "data/demo.yaml"      # dataset description (see README); --data overrides
    image_size = 512             # network input is image_size x image_size
    mean = [0.485, 0.456, 0.406]  # in [0, 1] RGB
    std = [0.229, 0.224, 0.225]
    hflip_prob = 0.5
    scale_min = Auto(float)      # random scale jitter range when training (EfficientDet: 0.1-2.0);
    scale_max = Auto(float)      # auto: narrower for short runs
    skip_bad_images = False      # True: images that fail to decode are skipped and counted, not fatal
    skip_bad_records = False     # True: train without the images a start-up dataset check finds problems in
                                 # (missing/unreadable image, bad box, unknown class) and print how many; False: refuse
    tile = 0                     # training on large pictures: > 0 cuts a random tile x tile window of original pixels
                                 # from each picture before the resize (boxes clipped; dropped when under 20% of their
                                 # area is left); set image_size = tile and predict with --tile (core.inference.tiling). 0 = off


class augment(Section):
    """Training-only augmentations on top of dataset's scale / crop / flip (core.data.augment); all off by default."""
    hsv_prob = 0.0               # probability of an HSV colour jitter per training picture
    hsv_h = 0.015                # hue shift, uniform in +-hsv_h of the hue circle
    hsv_s = 0.7                  # saturation gain, uniform in 1 +- hsv_s
    hsv_v = 0.4                  # value (brightness) gain, uniform in 1 +- hsv_v
    brightness = 0.0             # add uniform(+-brightness) x 255 to every pixel (0 = off)
    contrast = 0.0               # scale the deviation from the picture's mean by uniform(1 +- contrast) (0 = off)
    mosaic_prob = 0.0            # probability that a sample is a 2x2 mosaic of its picture and 3 random others
    mixup_prob = 0.0             # probability of blending a sample with another transformed one (MixUp)
    mixup_alpha = 8.0            # MixUp ratio ~ Beta(alpha, alpha); YOLOv4/5 use 32 (ratios near 0.5)
    cutmix_prob = 0.0            # probability of pasting a random rectangle of another sample (CutMix)


class backbone(Section, options=BACKBONES):  # + each backbone's own options (its file)
    type = "timm"
    name = "tf_efficientnet_b0"  # any timm model with features_only support
    out_levels = [3, 4, 5]       # pyramid levels taken from the backbone (stride 2**level)
    drop_path_rate = 0.2
    pretrained = True            # start from timm's ImageNet weights for name, when timm has them and no pretrain
                                 # weights are given: from timm's cache, else downloaded when the run starts
                                 # (building never loads them); False = a deliberate from-scratch run


class neck(Section, options=NECKS):  # + each neck's own options (its file)
    type = "bifpn"
    channels = 64                # W_bifpn = 64 * 1.35**phi, rounded as in the paper
    repeats = 3                  # D_bifpn = 3 + phi
    min_level = 3
    max_level = 7                # P6, P7 are made from P5 by 1x1 conv + max-pool
    padding = "same"             # "same" = TensorFlow SAME (as in google/automl); "" = symmetric


class head(Section, options=HEADS):  # + each head's own options (its file)
    type = "effdet"              # effdet (EfficientDet subnets) | retina (RetinaNet subnets) | yolo
    repeats = 3                  # D_class = 3 + floor(phi / 3)


class anchors(Section):
    scale = 4.0                  # anchor side = scale * stride at aspect ratio 1
    num_scales = 3               # octave scales 2**(i / num_scales)
    aspect_ratios = [[1.0, 1.0], [1.4, 0.7], [0.7, 1.4]]  # (w, h) multipliers
    yolo = [[12, 16, 19, 36, 40, 28], [36, 75, 76, 55, 72, 146], [142, 110, 192, 243, 459, 401]]  # yolo head:
                                 # w, h pairs in input pixels, one row per output level, finest first (YOLOv4 COCO)
    auto = False                 # the trainer prints the share of training boxes an anchor matches (core.tasks.anchor_fit)
                                 # and, below 95%, anchors that fit as a --set line; True uses those in place of
                                 # scale / aspect_ratios (effdet heads) or yolo (yolo heads) and says so


class loss(Section, options=TASKS):
    """The training loss: its fields are the head families' own (core/tasks/anchor_task.py, core/tasks/yolo.py)."""


class test(Section):
    batch_image = 8
    min_det_score = 0.001
    nms_thresh = 0.5
    max_det_per_image = 100
    top_n = 1000                 # candidates kept before NMS (over all levels and classes)


class pretrain(Section):
    """Starting weights and frozen parameters, applied right after the network is built (core.weights.pretrain)."""
    backbone_weights = ""        # backbone.body's weights: a timm model name (timm's ImageNet weights; needs the hub
                                 # or timm's cache) or a file (timm / torchvision / lukemelas / DetLab / effdet layout;
                                 # torch, safetensors or MXNet .params; pkg:MODULE/PATH = a file in an installed
                                 # package); "" = none
    detector_weights = ""        # whole-detector weights loaded after backbone_weights: a DetLab checkpoint (EMA when
                                 # saved) or state dict, or an effdet EfficientDet state dict (converted); "" = none
    fixed_param = []             # patterns of parameter names to freeze, e.g. ["backbone.body.conv_stem.*",
                                 # "backbone.body.bn1.*"]; fnmatch style ('re:' prefix = regex); a BatchNorm whose
                                 # parameters are all frozen keeps its running statistics too (stays in eval mode)
    excluded_param = []          # patterns of (DetLab-layout) checkpoint tensor names not to load,
                                 # e.g. ["head.*.predict.*"]
    allow_pickle = False         # weights files are read with torch.load(weights_only=True): tensors and plain values,
                                 # nothing in the file runs. A file that needs full unpickling (numpy objects, a whole
                                 # pickled nn.Module, custom classes) is refused unless True; unpickling can run any
                                 # code the file carries, so set it (or pass --allow-pickle) only for files you trust.
                                 # Covers backbone_weights, detector_weights, --resume, detection_test.py --weights and
                                 # --ensemble (--allow-pickle on a command line sets it)
