"""`python -m train ...`: see train/trainer.py."""
import sys

from train.trainer import main

sys.exit(main())
