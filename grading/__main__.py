"""`python -m grading SUBMISSION_DIR... --out DIR`: the batch command (grading/batch.py).

From the clone's root as `python -m grading`, or from any folder as `python CLONE/grading`
(the folder run as a script: its parent, the clone, is put on the import path first).
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grading.batch import main  # after the import path is set

sys.exit(main())
