"""``python -m voxmill.cli``: the ``voxmill`` command."""

import sys

from voxmill.cli.main import main

sys.exit(main())
