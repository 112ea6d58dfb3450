"""``python -m visionline.training``: the trainer process every compute backend starts."""

import sys

from visionline.training.entry import main

sys.exit(main())
