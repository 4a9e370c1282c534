"""``python -m otelprof_middleware summary <file|folder>`` (see :mod:`.cli`)."""

import sys

from .cli import main

sys.exit(main())
