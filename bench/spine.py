"""The end-to-end spine alone: `bench/run --only large small` (kept for its old command line).

    .venv/bin/python bench/spine.py [--quick] [--json FILE] [--workdir DIR]

One large file and a flood of small files through a gateway pair, each agent its own process,
every figure beside its baseline from the same run. The code lives in bench/zgbench/ (`large`,
`small`, `pair`, `baselines`); see the bench section of README.md for the figures.
"""

from __future__ import annotations

import sys

from zgbench.cli import main

if __name__ == "__main__":
    sys.exit(main(["--only", "large", "small", *sys.argv[1:]]))
