"""Adapters mode: the screen, what it does to an adapter (actions), its table and texts (widgets)."""
