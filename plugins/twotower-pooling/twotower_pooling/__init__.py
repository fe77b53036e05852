"""twotower-pooling: Transformer user encoders that pool with a learned token or query.

Registers two user encoders (``--user-encoder transformer-cls`` and
``--user-encoder transformer-attention``); the models are in ``encoders.py``.
torch is imported inside the hook, so looking up retrievers and formats (the
torch-free serving runtime) never pays for it.
"""

from __future__ import annotations

from twotower.hookspecs import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_user_encoders(register):
    from .encoders import TransformerAttention, TransformerCLS

    register("transformer-cls", TransformerCLS)
    register("transformer-attention", TransformerAttention)
