"""Convert mode: the screen, its new-run form, and a convert job's history and drawings (widgets)."""
