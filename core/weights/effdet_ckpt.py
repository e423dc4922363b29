"""rwightman/effdet EfficientDet state dicts -> DetLab ``effdet_bX`` names.

effdet (``tf_efficientdet_d0`` ... with ``separable_conv=True``, ``head_bn_level_first`` either way)::

    backbone.*                                                  timm EfficientNet features
    fpn.resample.L.conv.{conv.weight,conv.bias,bn.*}            extra level L (P6 from P5, ...)
    fpn.cell.C.fnode.M.combine.edge_weights                     fusion weights of node M
    fpn.cell.C.fnode.M.combine.resample.K.conv.{conv,bn}.*      1x1 conv+BN on input node K
    fpn.cell.C.fnode.M.after_combine.conv.{conv_dw,conv_pw,bn}.*
    {class,box}_net.conv_rep.I.{conv_dw,conv_pw}.*              shared separable convs
    {class,box}_net.bn_rep.I.L.bn.*   (or bn_rep.L.I.* when levels come first)
    {class,box}_net.predict.{conv_dw,conv_pw}.*

DetLab (``symbol.builder`` with ``neck.type = bifpn``, ``head.type = effdet``)::

    backbone.body.*
    neck.extra.E.conv.{conv.weight,bn.*}                        E = L - number of backbone levels
    neck.cells.C.nodes.M.edge_weights
    neck.cells.C.nodes.M.resample.J.conv.{conv.weight,bn.*}     J = position of K in node M's inputs
    neck.cells.C.nodes.M.conv.{conv_dw,conv_pw,bn}.*
    head.{class,box}_net.convs.I.*, head.{class,box}_net.norms.I.L.*, head.*_net.predict.*

The node index M and each node's input ids come from the DetLab model's own BiFPN wiring
(``node.inputs``); effdet's input offsets K must be among them, else the wirings differ.

Two changes beyond names:

* effdet's "redundant" conv biases before a BatchNorm (``conv_pw.bias`` / ``conv.bias``) are folded
  into that BN's ``running_mean`` (``BN(x + b)`` has mean ``mu`` exactly when ``BN(x)`` has
  ``mu - b``); a head conv's bias goes into each level's BN.
* box regression: effdet's channels per anchor are ``(dy, dx, dh, dw)``, DetLab's ``(dx, dy, dw, dh)``
  (``core.ops.box_coder``), so the box predictor's output channels are permuted.

Not representable in DetLab (refused or noted): non-separable heads, ``conv_bn_relu_pattern`` FPNs
(the state dict looks the same; effdet's ``tf_efficientdet_d*`` / ``_lite*`` do not use it).
"""
from __future__ import annotations

import re

import torch
from torch import nn

from core.weights.common import Conversion, ConversionError

BOX_PERMUTATION = (1, 0, 3, 2)  # DetLab channel k of an anchor <- effdet channel BOX_PERMUTATION[k]

_EXTRA = re.compile(r"^fpn\.resample\.(\d+)\.conv\.(conv|bn)\.(.+)$")
_EDGE = re.compile(r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.combine\.edge_weights$")
_NODE_RESAMPLE = re.compile(r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.combine\.resample\.(\d+)\.conv\.(conv|bn)\.(.+)$")
_AFTER = re.compile(r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.after_combine\.conv\.(conv_dw|conv_pw|bn)\.(.+)$")
_HEAD_CONV = re.compile(r"^(class_net|box_net)\.conv_rep\.(\d+)\.(conv_dw|conv_pw)\.(.+)$")
_HEAD_BN_REPEAT_FIRST = re.compile(r"^(class_net|box_net)\.bn_rep\.(\d+)\.(\d+)\.bn\.(.+)$")
_HEAD_BN_LEVEL_FIRST = re.compile(r"^(class_net|box_net)\.bn_rep\.(\d+)\.(\d+)\."
                                  r"(weight|bias|running_mean|running_var|num_batches_tracked)$")
_PREDICT = re.compile(r"^(class_net|box_net)\.predict\.(conv_dw|conv_pw)\.(.+)$")


def _strip_bench_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """effdet's DetBenchTrain / DetBenchPredict save the network under ``model.``."""
    if state and all(k.startswith("model.") for k in state):
        return {k[len("model."):]: v for k, v in state.items()}
    return state


def _permute_box_channels(tensor: torch.Tensor, name: str) -> torch.Tensor:
    if tensor.shape[0] % 4:
        raise ConversionError(f"'{name}' has {tensor.shape[0]} output channels, not 4 per anchor")
    anchors = tensor.shape[0] // 4
    index = torch.tensor([a * 4 + BOX_PERMUTATION[k] for a in range(anchors) for k in range(4)])
    return tensor.index_select(0, index)


class _EffdetMapper:
    """Maps one effdet name at a time; collects biases to fold and what was renamed / removed."""

    def __init__(self, model: nn.Module):
        for part in ("backbone", "neck", "head"):
            if not hasattr(model, part):
                raise ConversionError(f"effdet weights convert into a DetLab detector (backbone / neck / head); "
                                      f"got {type(model).__name__}")
        neck = model.neck
        if not hasattr(neck, "cells") or not hasattr(neck, "extra"):
            raise ConversionError("effdet weights need neck.type 'bifpn' (the DetLab model has "
                                  f"{type(neck).__name__}); use a config/effdet_b*.py config")
        self.model = model
        self.num_backbone_levels = len(neck.levels) - len(neck.extra)
        self.node_inputs = [[list(node.inputs) for node in cell.nodes] for cell in neck.cells]
        self.folds: list[tuple[str, list[str], torch.Tensor]] = []  # (source bias, target BN prefixes, bias)

    def node(self, name: str, cell: int, node: int) -> list[int]:
        if cell >= len(self.node_inputs) or node >= len(self.node_inputs[cell]):
            raise ConversionError(f"'{name}': the DetLab BiFPN has {len(self.node_inputs)} cells of "
                                  f"{len(self.node_inputs[0]) if self.node_inputs else 0} nodes; choose the config "
                                  "whose neck.repeats / levels match the effdet model")
        return self.node_inputs[cell][node]

    def map(self, name: str, tensor: torch.Tensor) -> str | None:
        """DetLab name for ``name``, or ``None`` when the tensor is a folded bias."""
        if name.startswith("backbone."):
            return "backbone.body." + name[len("backbone."):]
        if m := _EXTRA.match(name):
            level, part, param = int(m.group(1)), m.group(2), m.group(3)
            prefix = f"neck.extra.{level - self.num_backbone_levels}.conv"
            if part == "conv" and param == "bias":
                self.folds.append((name, [f"{prefix}.bn"], tensor))
                return None
            return f"{prefix}.{part}.{param}"
        if m := _EDGE.match(name):
            cell, node = int(m.group(1)), int(m.group(2))
            inputs = self.node(name, cell, node)
            if tensor.numel() != len(inputs):
                raise ConversionError(f"'{name}' weighs {tensor.numel()} inputs, DetLab node {node} of cell {cell} "
                                      f"has {len(inputs)} ({inputs}): the BiFPN wirings differ")
            return f"neck.cells.{cell}.nodes.{node}.edge_weights"
        if m := _NODE_RESAMPLE.match(name):
            cell, node, offset, part, param = (int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4),
                                               m.group(5))
            inputs = self.node(name, cell, node)
            if offset not in inputs:
                raise ConversionError(f"'{name}': effdet node {node} of cell {cell} reads node {offset}, DetLab's "
                                      f"reads {inputs}: the BiFPN wirings differ")
            prefix = f"neck.cells.{cell}.nodes.{node}.resample.{inputs.index(offset)}.conv"
            if part == "conv" and param == "bias":
                self.folds.append((name, [f"{prefix}.bn"], tensor))
                return None
            return f"{prefix}.{part}.{param}"
        if m := _AFTER.match(name):
            cell, node, part, param = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
            self.node(name, cell, node)
            prefix = f"neck.cells.{cell}.nodes.{node}.conv"
            if part == "conv_pw" and param == "bias":
                self.folds.append((name, [f"{prefix}.bn"], tensor))
                return None
            return f"{prefix}.{part}.{param}"
        if m := _HEAD_CONV.match(name):
            net, rep, part, param = m.group(1), int(m.group(2)), m.group(3), m.group(4)
            if part == "conv_pw" and param == "bias":
                all_norms = getattr(self.model.head, net).norms
                norms = all_norms[rep] if rep < len(all_norms) else []
                self.folds.append((name, [f"head.{net}.norms.{rep}.{lv}" for lv in range(len(norms))], tensor))
                return None
            return f"head.{net}.convs.{rep}.{part}.{param}"
        if m := _HEAD_BN_REPEAT_FIRST.match(name):
            return f"head.{m.group(1)}.norms.{m.group(2)}.{m.group(3)}.{m.group(4)}"
        if m := _HEAD_BN_LEVEL_FIRST.match(name):
            return f"head.{m.group(1)}.norms.{m.group(3)}.{m.group(2)}.{m.group(4)}"
        if m := _PREDICT.match(name):
            return f"head.{m.group(1)}.predict.{m.group(2)}.{m.group(3)}"
        if re.match(r"^(class_net|box_net)\.conv_rep\.\d+\.conv\.", name):
            raise ConversionError(f"'{name}': effdet head without separable convs; DetLab's effdet head is "
                                  "separable only")
        raise ConversionError(f"'{name}' is not an effdet EfficientDet tensor name this converter knows; "
                              "is the file in another layout? try --from auto")


def effdet_to_detlab(state: dict[str, torch.Tensor], model: nn.Module) -> Conversion:
    """Convert an effdet EfficientDet state dict into the names of ``model``, a DetLab detector built
    with a matching config (same backbone, ``neck.channels``, ``neck.repeats``, ``head.repeats``,
    levels, anchors; ``num_classes`` as effdet's, e.g. 90 for COCO).

    Returns the DetLab state with the redundant biases folded into the BN running means and the
    box predictor's channels permuted to ``(dx, dy, dw, dh)``. Shapes are checked by the loader.
    """
    state = _strip_bench_prefix(state)
    mapper = _EffdetMapper(model)
    _check_fusion(state, model)
    out: dict[str, torch.Tensor] = {}
    renamed: list[tuple[str, str]] = []
    for name, tensor in state.items():
        new = mapper.map(name, tensor)
        if new is None:
            continue
        if new.startswith("head.box_net.predict.conv_pw."):
            tensor = _permute_box_channels(tensor, name)
        out[new] = tensor
        renamed.append((name, new))
    removed: list[tuple[str, str]] = []
    notes: list[str] = []
    for source, bn_prefixes, bias in mapper.folds:
        targets = [p for p in bn_prefixes if f"{p}.running_mean" in out]
        if not targets:
            removed.append((source, f"its BatchNorm ({', '.join(bn_prefixes) or 'none'}) is not in the checkpoint"))
            continue
        for prefix in targets:
            key = f"{prefix}.running_mean"
            if out[key].shape != bias.shape:
                raise ConversionError(f"'{source}' {tuple(bias.shape)} cannot fold into '{key}' "
                                      f"{tuple(out[key].shape)}")
            out[key] = out[key] - bias.to(out[key].dtype)
        removed.append((source, f"folded into {', '.join(t + '.running_mean' for t in targets)}"))
    if mapper.folds:
        notes.append(f"folded {len(mapper.folds)} redundant conv biases into the following BatchNorms' running_mean")
    if any(k.startswith("head.box_net.predict.conv_pw.") for k in out):
        notes.append("permuted box predictor channels per anchor from effdet (dy, dx, dh, dw) "
                     "to DetLab (dx, dy, dw, dh)")
    return Conversion(out, renamed, removed, notes)


def _check_fusion(state: dict[str, torch.Tensor], model: nn.Module) -> None:
    """Refuse weights whose BiFPN fusion (learned input weights or a plain sum) differs from the
    DetLab model's ``neck.fusion``: the tensors would load but the outputs would differ."""
    if not any(k.startswith("fpn.cell.") for k in state):
        return  # no BiFPN in the checkpoint (a backbone alone)
    effdet_weighs = any(_EDGE.match(k) for k in state)
    detlab_weighs = any(k.startswith("neck.") and k.endswith(".edge_weights") for k in model.state_dict())
    if effdet_weighs and not detlab_weighs:
        raise ConversionError("the effdet weights fuse BiFPN inputs with learned weights (effdet's bifpn_fa or "
                              "bifpn_attn) but the config's neck.fusion is 'sum'; set neck.fusion = 'fast' "
                              "('softmax' for bifpn_attn)")
    if detlab_weighs and not effdet_weighs:
        raise ConversionError("the effdet weights fuse BiFPN inputs by a plain sum (effdet's bifpn_sum, the "
                              "EfficientDet-Lite models) but the config's neck.fusion weighs them; set "
                              "neck.fusion = 'sum' and neck.activation = head.activation = 'relu6' "
                              "(as config/effdet_lite*.py)")
