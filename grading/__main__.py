"""`python -m grading SUBMISSION_DIR... --out DIR`: the batch command (grading/batch.py)."""

from __future__ import annotations

import sys

from grading.batch import main

sys.exit(main())
