"""`python -m legaltune.cli` (what torchrun and `--nproc` run on every rank)."""

import sys

from legaltune.cli import main

sys.exit(main())
