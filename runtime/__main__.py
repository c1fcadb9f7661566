"""`python -m runtime COMMAND ...`: see runtime/cli/__init__.py."""
import sys

from runtime.cli import main

sys.exit(main())
