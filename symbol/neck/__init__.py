"""Necks. Importing this package registers each one in ``symbol.registry.NECKS``."""
from symbol.neck import bifpn, fpn, nasfpn, yolo_pan  # noqa: F401  (their registrations)
