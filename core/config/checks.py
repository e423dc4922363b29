"""Value checks on a resolved config, run before any heavy work: one clear line per problem.

``core.config.loading`` already rejects unknown fields and wrong types; this module rejects values of
the right type that cannot work (a negative learning rate, an unknown backbone, an empty epoch
range) and names the field, the value and what is allowed.
"""
from __future__ import annotations

from typing import Any, Callable

from core.config.loading import Config, ConfigError, is_auto, takes_auto

# (section, field, test, what is allowed)
_RULES: list[tuple[str, str, Callable[[Any], bool], str]] = [
    ("General", "batch_image", lambda v: v >= 1, "an integer >= 1"),
    ("General", "loader_worker", lambda v: v >= 0, ">= 0"),
    ("General", "log_frequency", lambda v: v >= 1, ">= 1"),
    ("General", "keep_checkpoints", lambda v: v >= 0, ">= 0 (0 keeps all)"),
    ("General", "bn_momentum", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("General", "device", lambda v: v in ("auto", "cpu", "cuda"), "auto, cpu or cuda"),
    ("General", "precision", lambda v: v in ("bf16", "fp16", "fp32"), "bf16, fp16 or fp32"),
    ("schedule", "mult", lambda v: v > 0, "> 0"),
    ("schedule", "begin_epoch", lambda v: v >= 0, ">= 0"),
    ("schedule", "warmup_epochs", lambda v: v >= 0, ">= 0"),
    ("schedule", "warmup_factor", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("schedule", "decay", lambda v: v in ("cosine", "step"), "cosine or step"),
    ("schedule", "lr_gamma", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("schedule", "min_lr_ratio", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("schedule", "eval_every", lambda v: v >= 0, ">= 0 (0 = never)"),
    ("optimizer", "type", lambda v: v in ("sgd", "adamw"), "sgd or adamw"),
    ("optimizer", "lr", lambda v: v > 0, "> 0"),
    ("optimizer", "lr_batch", lambda v: v >= 1, ">= 1"),
    ("optimizer", "momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optimizer", "weight_decay", lambda v: v >= 0, ">= 0"),
    ("optimizer", "clip_grad_norm", lambda v: v >= 0, ">= 0 (0 = off)"),
    ("optimizer", "ema_decay", lambda v: 0 <= v < 1, "in [0, 1) (0 = off)"),
    ("dataset", "image_size", lambda v: v >= 32, ">= 32"),
    ("dataset", "std", lambda v: len(v) == 3 and all(s > 0 for s in v), "3 values > 0"),
    ("dataset", "mean", lambda v: len(v) == 3, "3 values"),
    ("dataset", "hflip_prob", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("dataset", "scale_min", lambda v: v > 0, "> 0"),
    ("backbone", "drop_path_rate", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("neck", "channels", lambda v: v >= 1, ">= 1"),
    ("neck", "repeats", lambda v: v >= 1, ">= 1"),
    ("head", "repeats", lambda v: v >= 0, ">= 0"),
    ("anchors", "scale", lambda v: v > 0, "> 0"),
    ("anchors", "num_scales", lambda v: v >= 1, ">= 1"),
    ("loss", "focal_alpha", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("loss", "focal_gamma", lambda v: v >= 0, ">= 0"),
    ("loss", "huber_delta", lambda v: v > 0, "> 0"),
    ("test", "batch_image", lambda v: v >= 1, ">= 1"),
    ("test", "min_det_score", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("test", "nms_thresh", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("test", "max_det_per_image", lambda v: v >= 1, ">= 1"),
    ("test", "top_n", lambda v: v >= 1, ">= 1"),
]


def check_values(cfg: Config) -> None:
    """Raise :class:`ConfigError` for the first value that cannot work, naming the field."""
    for section, field, ok, allowed in _RULES:
        value = getattr(getattr(cfg, section), field)
        if is_auto(value) and takes_auto(section, field):
            continue  # chosen when the run starts (core.engine.recipe)
        if not ok(value):
            raise ConfigError(f"{cfg.source}: {section}.{field} = {value!r} is not allowed; use {allowed}")
    s, d, lo = cfg.schedule, cfg.dataset, cfg.loss
    if s.end_epoch <= s.begin_epoch:
        raise ConfigError(f"{cfg.source}: schedule.end_epoch = {s.end_epoch} must be > schedule.begin_epoch = "
                          f"{s.begin_epoch}")
    if not (is_auto(d.scale_min) or is_auto(d.scale_max)) and d.scale_max < d.scale_min:
        raise ConfigError(f"{cfg.source}: dataset.scale_max = {d.scale_max} is below dataset.scale_min = {d.scale_min}")
    if lo.ignore_iou > lo.match_iou:
        raise ConfigError(f"{cfg.source}: loss.ignore_iou = {lo.ignore_iou} must not exceed loss.match_iou = "
                          f"{lo.match_iou}")
    if cfg.neck.max_level < cfg.neck.min_level:
        raise ConfigError(f"{cfg.source}: neck.max_level = {cfg.neck.max_level} is below neck.min_level")
    _check_parts(cfg)


def _check_parts(cfg: Config) -> None:
    import difflib

    from symbol.builder import BACKBONES, HEADS, NECKS
    from symbol.layers import ACTIVATIONS
    from symbol.neck.bifpn import FUSIONS

    for section, field, choices in (("backbone", "type", BACKBONES), ("neck", "type", NECKS), ("head", "type", HEADS),
                                    ("neck", "fusion", FUSIONS), ("neck", "activation", ACTIVATIONS),
                                    ("head", "activation", ACTIVATIONS)):
        value = getattr(getattr(cfg, section), field)
        if value not in choices:
            raise ConfigError(f"{cfg.source}: {section}.{field} = {value!r} is unknown; choose one of {', '.join(choices)}")
    if cfg.backbone.type == "timm":
        import timm

        name = cfg.backbone.name
        if name not in timm.list_models():
            near = difflib.get_close_matches(name, timm.list_models(), n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else "; see timm.list_models()"
            raise ConfigError(f"{cfg.source}: backbone.name = {name!r} is not a timm model{hint}")
