"""`python -m refswitch …` is `svcfp switch …`, without loading the rest of the project."""

from __future__ import annotations

import sys

from refswitch.cli import main

sys.exit(main(sys.argv[1:]))
