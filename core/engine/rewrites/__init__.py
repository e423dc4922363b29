"""Inference-time rewrites of a trained network, applied by ``core.engine.inference.inference_model``
and nowhere else: BatchNorm folding, TF-SAME stride-2 convolutions without a padded copy, the
EfficientDet head's per-level form, squeeze-excite as fusable products. Each gives the plain
eval-mode network's outputs to float rounding; the networks in ``symbol/`` know nothing of them."""
