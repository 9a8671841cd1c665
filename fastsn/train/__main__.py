"""``python -m fastsn.train``: the same as ``fastsn-train``."""
import sys

from fastsn.train.cli import main

sys.exit(main())
