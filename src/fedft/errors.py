"""The one exception type for bad user input: the CLI prints it as one line and exits 2."""


class UsageError(Exception):
    """Bad input (config value, file, missing package). The message names what was wrong and what is allowed."""
