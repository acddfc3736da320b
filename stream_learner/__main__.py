"""``python -m stream_learner`` is the ``stream-learner`` command."""

import sys

from stream_learner.tools.cli import main

sys.exit(main())
