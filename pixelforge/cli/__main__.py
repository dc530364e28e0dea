"""``python -m pixelforge.cli`` (what ``accelerate launch -m pixelforge.cli train CONFIG`` runs)."""
import sys

from . import main

sys.exit(main())
