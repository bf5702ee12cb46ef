"""``python -m medad`` (and ``torchrun … -m medad``): the ``medad`` command."""

import sys

from medad.cli.main import main

sys.exit(main())
