"""flamenco-p2p: a render farm for Blender whose nodes find and organise each other."""

import logging

__version__ = "0.1.0"

# Library code logs under this root; the daemon and the CLI install real handlers.
logging.getLogger(__name__).addHandler(logging.NullHandler())
