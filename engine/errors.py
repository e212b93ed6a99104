"""User-facing errors: a message that says what is wrong and a hint that says what to do."""


class HumanizerError(Exception):
    """An error caused by user input or environment, shown to the user as-is (no traceback)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message
