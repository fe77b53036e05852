"""Serve recommendations from an exported bundle without PyTorch.

``load_bundle(path)`` needs numpy, onnxruntime (for ONNX bundles) and hnswlib
only; importing and using it never imports torch.
"""

from .runtime import Bundle, load_bundle

__all__ = ["Bundle", "load_bundle"]
