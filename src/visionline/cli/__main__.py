"""``python -m visionline.cli``: the same as the ``visionline`` command."""

import sys

from visionline.cli import main

sys.exit(main())
