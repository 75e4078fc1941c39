"""`python -m orchestrator.tune`: the schedule search's command line (orchestrator.tune.cli)."""

import sys

from orchestrator.tune.cli import main

if __name__ == "__main__":
    sys.exit(main())
