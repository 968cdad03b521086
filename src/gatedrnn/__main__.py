"""python -m gatedrnn: the gatedrnn command."""
import sys

from .cli import main

sys.exit(main())
