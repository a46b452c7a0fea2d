"""Restore an image with PnP-HVAE: ``python restore.py --help``; no argument runs the demo."""
import sys

from restore.cli import main

if __name__ == "__main__":
    sys.exit(main())
