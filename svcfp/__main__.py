"""`python -m svcfp …` is the `svcfp` command."""

from __future__ import annotations

import sys

from svcfp.cli import main

sys.exit(main())
