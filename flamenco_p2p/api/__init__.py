"""The HTTP API that every node serves on port 8888."""
