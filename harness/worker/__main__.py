"""``python -m harness.worker``: see :mod:`harness.worker.entry`. Nothing imports this module."""

import sys

from harness.worker.entry import main

sys.exit(main(sys.argv[1:]))
