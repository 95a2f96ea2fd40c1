"""Evaluate a checkpoint (reconstruction MSE, SWD, energy AUROC, FID, IS): `python launch/evaluate.py CHECKPOINT`.

The program lives in progressive/cli/evaluate.py (also installed as `triangle-evaluate`); see --help.
"""

import sys

from progressive.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
