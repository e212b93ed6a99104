"""Data mode: the screen, its build form, and a build job's history and tables (widgets)."""
