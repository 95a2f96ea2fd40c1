"""Map a trained energy model's landscape: `python launch/energy_landscape.py CHECKPOINT [--space image|latent]`.

The program lives in progressive/cli/energy_landscape.py (also installed as `triangle-energy-landscape`); see --help.
"""

import sys

from progressive.cli.energy_landscape import main

if __name__ == "__main__":
    sys.exit(main())
