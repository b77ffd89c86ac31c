"""``python -m keyseed.device``: the ``keyseed device`` command on its own."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
