"""`python -m zgbench` (with bench/ on sys.path) is `bench/run`."""

import sys

from .cli import main

sys.exit(main())
