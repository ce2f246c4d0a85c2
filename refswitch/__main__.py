"""`python -m refswitch …` is `svcfp switch …`."""

from __future__ import annotations

import sys

from controller.cli import main

sys.exit(main(["switch", *sys.argv[1:]]))
