"""Train the divergence triangle progressively: `accelerate launch launch/train.py --res 1024 --data celebahq.lmdb`.

The program lives in progressive/cli/train.py (also installed as `triangle-train`); see --help and docs/training.md.
"""

import sys

from progressive.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
