"""The tail service: runs on the edge server."""
