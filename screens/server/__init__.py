"""Server mode: the screen, what it does (actions), and a serve run's request log (widgets)."""
