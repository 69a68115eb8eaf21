"""fedft's exceptions: UsageError for bad user input (the CLI prints it as one line and exits 2), RunFailed for a run
that started and failed (one line, exit 1)."""


class UsageError(Exception):
    """Bad input (config value, file, missing package). The message names what was wrong and what is allowed.
    Characters that would break the one line (newlines and other control characters, which the input itself may
    carry) are shown escaped."""

    def __init__(self, message: str = "") -> None:
        super().__init__("".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in str(message)))


class RunFailed(Exception):
    """A run that started but did not complete, for a reason its own log records (a run on Flower's simulation
    runtime): the CLI prints the message, which names the log, and exits 1."""
