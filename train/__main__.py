"""`python -m infgen.train ...`: see train/trainer.py."""
import sys

from infgen.train.trainer import main

sys.exit(main())
