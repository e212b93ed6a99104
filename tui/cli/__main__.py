"""`python -m tui.cli ...`, as the job runner starts a verb in its own process."""

import sys

from tui.cli import main

sys.exit(main())
