"""The web dashboard: static files that the HTTP API serves at ``/``."""

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
