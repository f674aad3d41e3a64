"""``python -m circuitdag.cli``: the ``circuitdag`` command."""

import sys

from circuitdag.cli import main

if __name__ == "__main__":
    sys.exit(main())
