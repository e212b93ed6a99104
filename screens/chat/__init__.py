"""Chat mode: the screen, its conversations, the A/B judge, and the message views (widgets)."""
