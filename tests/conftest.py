"""Make the repository root importable so a bare ``pytest`` finds ``core``, ``symbol``, ``utils``."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
