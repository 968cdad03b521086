"""The one exception type for user mistakes: the CLI prints its message on one line and exits 2."""

from pathlib import Path


class UserError(ValueError):
    """A mistake in what the user gave us (a file, an argument, a shape): the message says what
    was wrong and what was expected."""


def describe(e: BaseException) -> str:
    """An exception as one line, for the parenthesis of a UserError message."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def read_user_file(path) -> bytes:
    """The bytes of a file the user named, or a UserError that names it. Parsers then read from
    memory, so a truncated file cannot make them read past the bytes really there."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as e:  # a directory, no permission, an I/O error
        raise UserError(f"{path}: cannot read ({describe(e)})") from None
