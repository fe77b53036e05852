"""The one exception type users see.

Every problem caused by input (a missing file, a bad column, an unknown plugin
name, a corrupted artifact) is raised as :class:`TwoTowerError` with a message
that fits on one line and says what is wrong and where. The CLI prints that
line and exits non-zero; anything else is a bug and keeps its traceback.
"""

import contextlib
from collections.abc import Callable, Iterator


class TwoTowerError(Exception):
    """A problem with the user's input, data or artifacts, explained in one line."""


class TwoTowerWarning(UserWarning):
    """A problem the command goes on past (a broken plugin, an index left out), told in
    one line: the CLI prints it as ``warning: ...``, without Python's source line."""


def reason(exc: BaseException) -> str:
    """A third-party exception's message on one line, for a ``TwoTowerError`` that cites it."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextlib.contextmanager
def refused_as(
    message: str, passes: Callable[[BaseException], bool] | None = None
) -> Iterator[None]:
    """Run third-party code that fails on a user's bad file: any exception but a
    ``TwoTowerError`` becomes one, ``message`` followed by the cause's own words.
    An exception ``passes`` accepts goes on as it is, to a caller that words it."""
    try:
        yield
    except TwoTowerError:
        raise
    except (Exception, SystemExit) as exc:  # loaders (onnxruntime, hnswlib, plugins) raise
        if passes is not None and passes(exc):
            raise
        # their own types; a plugin's sys.exit must not end the command in silence
        raise TwoTowerError(f"{message} ({reason(exc)})") from None
