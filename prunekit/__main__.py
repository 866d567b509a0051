"""``python -m prunekit ...``: the same command line as ``prunekit ...``."""
import sys

from .cli import main

sys.exit(main())
