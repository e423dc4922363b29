"""Weights from outside a run: pretrained starting points and files of other layouts renamed into DetLab's.

* ``pretrain``: the ``pretrain`` config section applied to a freshly built detector (ImageNet, files, freezing).
* ``weights_file``: read any supported file (DetLab checkpoint, ``torch.save`` state dict,
  safetensors, MXNet ``.params``) into a flat ``name -> tensor`` dict; ``pkg:`` paths.
* ``layout``: tell the layout of a state dict from its names (detlab, effdet, lukemelas, torchvision, timm).
* ``lukemelas``, ``torchvision_backbone``: backbone checkpoints -> timm module names.
* ``effdet_ckpt``: rwightman/effdet EfficientDet -> DetLab ``effdet_bX`` names (biases folded,
  box channels permuted).
* ``mxnet_ndarray``, ``mxnet_names``: MXNet's binary NDArray list format and its ``arg:`` / ``aux:`` names.
* ``surgery``: head stripping and class-channel selection on DetLab state dicts.
* ``common``: the :class:`~core.weights.common.Conversion` record all of them return.
"""
