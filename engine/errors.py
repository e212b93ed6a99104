"""User-facing errors: a message that says what is wrong and a hint that says what to do."""


class HumanizerError(Exception):
    """An error caused by user input or environment, shown to the user as-is (no traceback)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class AdapterConfigError(HumanizerError):
    """adapter_config.json does not describe the weights in adapters.safetensors (or the model)."""


class NeedsParent(HumanizerError):
    """A delta whose recorded parent is not among the adapters it would stack on."""
