"""Backbones. Importing this package registers each one in ``symbol.registry.BACKBONES``."""
from symbol.backbone import csp_darknet, timm_backbone  # noqa: F401  (their registrations)
