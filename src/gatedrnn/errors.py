"""The one exception type for user mistakes: the CLI prints its message on one line and exits 2."""


class UserError(ValueError):
    """A mistake in what the user gave us (a file, an argument, a shape): the message says what
    was wrong and what was expected."""


def describe(e: BaseException) -> str:
    """An exception as one line, for the parenthesis of a UserError message."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
