"""``python -m diffulex.serve``: see :mod:`diffulex.serve.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
