"""``python -m otelprof_middleware COMMAND`` (the ``otelprof`` command; see :mod:`.cli`)."""

import sys

from .cli import main

sys.exit(main())
