"""Export a latent interpolation video: `python launch/export_video.py CHECKPOINT --out loop.mp4` (see --help).

The program lives in progressive/cli/export_video.py (also installed as `triangle-export-video`).
"""

import sys

from progressive.cli.export_video import main

if __name__ == "__main__":
    sys.exit(main())
