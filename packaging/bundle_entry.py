"""Entry point of the PyInstaller bundle: the same as the `lm-explorer` console script."""

import sys

from explorer.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
