"""The error type of bad input (a flag, a file, a directory, a config value): the command lines end it
in one line naming the input, the problem and the fix, with exit code 2 (see neojax.cli)."""


class UsageError(ValueError):
    """A bad input: the message names it, says what is wrong and how to fix it."""
