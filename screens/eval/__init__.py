"""Eval mode: the screen, its form, its views and charts, and an eval job's history and tables (widgets)."""
