"""`python -m bench`: run the benchmark (options: `python -m bench --help`)."""

from __future__ import annotations

import sys

from bench.run import main

sys.exit(main())
