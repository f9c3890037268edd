"""``python -m flamenco_p2p`` runs the command line."""

import sys

from flamenco_p2p.cli import main

sys.exit(main())
