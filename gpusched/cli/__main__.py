"""``python -m gpusched.cli``: how the tests and gpusched.procs start daemons and commands."""
import sys

from gpusched.cli import main

sys.exit(main())
