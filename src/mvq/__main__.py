"""``python -m mvq``: the same as the ``mvq`` command (so ``torchrun -m mvq train ...`` works)."""

import sys

from mvq.cli import main

sys.exit(main())
