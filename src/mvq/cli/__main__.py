"""``python -m mvq.cli``: the same as the ``mvq`` command."""

import sys

from mvq.cli import main

sys.exit(main())
