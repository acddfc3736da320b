"""``python -m stream_learner`` is the ``stream-learner`` command."""

import sys

from .cli import main

sys.exit(main())
