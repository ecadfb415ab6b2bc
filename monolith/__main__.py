"""``python -m monolith``: the ``monolith`` command (see :mod:`monolith.cli`)."""

import sys

from monolith.cli import main

if __name__ == "__main__":
    sys.exit(main())
