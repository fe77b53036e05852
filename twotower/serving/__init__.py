"""Serve recommendations from an exported bundle without PyTorch.

``load_bundle(path)`` gives the recommendation core (``Recommender``) over
the bundle's exported towers; with an ONNX bundle it needs numpy,
onnxruntime and hnswlib only, and never imports torch.
"""

from ..recommendation import Recommender
from .runtime import load_bundle

__all__ = ["Recommender", "load_bundle"]
