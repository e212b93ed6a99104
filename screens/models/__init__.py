"""Models mode: the workspace's models."""
