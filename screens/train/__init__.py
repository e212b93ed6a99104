"""Train mode: the screen, its new-run form, and a training run's history and charts (widgets)."""
