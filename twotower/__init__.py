"""twotower: two-tower retrieval recommenders.

``import twotower`` stays light (no torch): the training API is imported on
first use, so the torch-free serving runtime can live in the same package.
"""

from typing import Any

__version__ = "0.1.0"

from .config import TwoTowerConfig
from .errors import TwoTowerError

_API = {"fit", "evaluate", "load", "FitResult"}

__all__ = ["Recommender", "TwoTowerConfig", "TwoTowerError", "__version__", *sorted(_API)]


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import api

        return getattr(api, name)
    if name == "Recommender":  # the torch-free core
        from .recommendation import Recommender

        return Recommender
    raise AttributeError(f"module 'twotower' has no attribute {name!r}")
