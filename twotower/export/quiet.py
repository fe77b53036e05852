"""Keep exporters quiet: their progress prints, warnings and advice are not for users."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings


@contextlib.contextmanager
def quiet_exporter(*logger_names: str):
    """Silence the exporter's progress prints, warnings and logs; errors still raise.

    ``logger_names`` adds loggers to silence ("" is the root logger, which
    onnxruntime's quantizer writes its advice to).
    """
    names = ("torch.onnx", "onnxscript", "torch.export", *logger_names)
    loggers = [logging.getLogger(name or None) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
