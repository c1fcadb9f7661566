"""`python -m infgen.runtime COMMAND ...`: see runtime/cli/__init__.py."""
import sys

from infgen.runtime.cli import main

sys.exit(main())
