"""The one exception type users see.

Every problem caused by input (a missing file, a bad column, an unknown plugin
name, a corrupted artifact) is raised as :class:`TwoTowerError` with a message
that fits on one line and says what is wrong and where. The CLI prints that
line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class TwoTowerError(Exception):
    """A problem with the user's input, data or artifacts, explained in one line."""


def reason(exc: BaseException) -> str:
    """A third-party exception's message on one line, for a ``TwoTowerError`` that cites it."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
