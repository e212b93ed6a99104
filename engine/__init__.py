"""Humanizer Studio engine: all ML, jobs and serving logic. Never imports Textual."""
