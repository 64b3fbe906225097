from __future__ import annotations

import sys

from .common import interrupt

interrupt.install()     # first: a SIGTERM during the imports below still ends with its line

from .cli import main  # noqa: E402

sys.exit(main())
