"""User-facing errors: a message that says what is wrong and a hint that says what to do."""


class HumanizerError(Exception):
    """An error caused by user input or environment, shown to the user as-is (no traceback)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


# The error types of the engine's domains live here, beside the hint format they share; each is
# still importable from its domain (engine.generate, engine.data).


class EngineError(HumanizerError):
    """A refused generation request or command (engine.generate), with an HTTP-like status and a
    machine-readable code."""

    status = 400
    code: str | None = None

    def __init__(self, message: str, hint: str | None = None, *, status: int | None = None,
                 code: str | None = None, param: str | None = None):
        super().__init__(message, hint)
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.param = param


class UnknownAdapter(EngineError):
    status, code = 400, "adapter_not_found"


class AdapterInUse(EngineError):
    status, code = 409, "adapter_in_use"


class EngineClosed(EngineError):
    status, code = 503, "engine_closed"


MAX_LISTED = 10  # a DataError lists this many problems and counts the rest


class DataError(HumanizerError):
    """Bad training rows (engine.data) stop a run before training; `.issues` holds every problem
    found (engine.data.RowIssue: file, line, field, message, fatal)."""

    def __init__(self, issues: list, source: str = "the data", message: str | None = None,
                 hint: str | None = None):
        if isinstance(issues, str):  # DataError(message, hint), like any HumanizerError
            self.issues = []
            super().__init__(issues, None if source == "the data" else source)
            return
        self.issues = list(issues)
        fatal = [i for i in self.issues if i.fatal]
        if message is None:
            shown = sorted(fatal, key=lambda i: i.line != 0)  # file-level problems first
            n = len(fatal)
            head = f"{n} problem{'s' if n != 1 else ''} in {source}:"
            body = [f"  {i}" for i in shown[:MAX_LISTED]]
            if n > MAX_LISTED:
                body.append(f"  ... and {n - MAX_LISTED} more ({n} in all)")
            message = "\n".join([head, *body])
        if hint is None:
            rows = {(i.file, i.line) for i in fatal if i.line}
            if any(i.line == 0 for i in fatal):
                hint = "fix the file(s) named above" + (
                    f"; for the {len(rows)} bad row(s), fix them or pass --skip-bad-rows" if rows else ""
                )
            else:
                hint = f"fix these rows, or pass --skip-bad-rows to leave the {len(rows)} bad row(s) out"
        super().__init__(message, hint)


class AdapterConfigError(HumanizerError):
    """adapter_config.json does not describe the weights in adapters.safetensors (or the model)."""


class NeedsParent(HumanizerError):
    """A delta whose recorded parent is not among the adapters it would stack on."""


class ServerError(HumanizerError):
    """A request our server refused (with its OpenAI error message and HTTP status) or that could
    not be sent (engine.serve.client)."""

    def __init__(self, message: str, status: int | None = None, hint: str | None = None):
        super().__init__(message, hint)
        self.status = status


class ConfigError(HumanizerError):
    """config.toml does not parse, or a table in it is not a table (tui.config); nothing is
    written over it."""


# Not here: engine.serve.http.ApiError is the wire form of an HTTP error (an OpenAI error
# object and a status) that the server answers with, not an error shown to a user with a hint;
# engine.events.Cancelled is a stop request, not an error.
