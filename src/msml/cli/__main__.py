"""`python -m msml.cli`: what the monitoring stack and the loop's trigger start (the interpreter they run in)."""

import sys

from msml.cli import main

sys.exit(main())
