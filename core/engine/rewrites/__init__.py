"""Inference-time rewrites of a trained network, applied by ``core.engine.inference.inference_model``
and nowhere else: BatchNorm folding (``fold_bn``, with the module swapper ``swap``). It gives the plain
eval-mode network's outputs to float rounding; the networks in ``symbol/`` know nothing of it. The
EfficientDet head's per-level form, the TF-SAME strided convs and the squeeze-excite products were
deleted on 2026-12-01: ``tools/bench_rewrites.py`` measured no gain beyond the spread of its rounds.
"""
