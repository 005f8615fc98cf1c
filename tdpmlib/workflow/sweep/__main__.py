"""``python -m tdpmlib.workflow.sweep``: the sweep CLI."""
import sys

from . import main

sys.exit(main())
