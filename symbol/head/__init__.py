"""Heads. Importing this package registers each one in ``symbol.registry.HEADS``."""
from symbol.head import effdet_head, yolo_head  # noqa: F401  (their registrations)
