"""Shared pytest set-up: the example scripts' folder (``scripts/``: ``offline_data``, ``_examples``) is importable,
since the example-data loaders are not part of the installed package."""

import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))
