"""``python -m pixelforge.cli COMMAND ...`` (e.g. under ``accelerate launch -m pixelforge.cli train CONFIG``)."""
import sys

from . import main

sys.exit(main())
