"""Export samples, reconstructions, energies and the trained networks:
`python launch/export.py {sample,reconstruct,energy,pretrained} CHECKPOINT ...`.

The program lives in progressive/cli/export.py (also installed as `triangle-export`); see --help.
"""

import sys

from progressive.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
