"""`python -m peakknn.server ARGS`: the same as `peakknn serve ARGS`."""

import sys

from ..cli import main

raise SystemExit(main(["serve", *sys.argv[1:]]))
