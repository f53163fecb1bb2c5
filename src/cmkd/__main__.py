"""``python -m cmkd`` is the ``cmkd`` command."""

import sys

from cmkd.cli import main

sys.exit(main())
