"""``python -m visionline.training``: the trainer process every compute backend starts."""

import sys

from visionline.training import main

sys.exit(main())
