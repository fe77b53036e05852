"""The extension contract: one hook per extension point.

Every hook receives a ``register(name, component)`` callable and calls it once
per component the plugin provides; what a component of each kind must offer
is its Protocol in ``contracts.py``. Built-in components register through
these same hooks (see ``twotower/builtins/``). A name registered twice is an
error that names both plugins.

Keep the imports of a plugin module light: import heavy libraries (torch)
inside the hook body, so that the torch-free serving runtime can look up
retrievers and formats without importing them.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from .contracts import DatasetLoader, Format, LossFactory, Retriever, UserEncoder

hookspec = pluggy.HookspecMarker("twotower")
hookimpl = pluggy.HookimplMarker("twotower")


@hookspec
def register_user_encoders(register: Callable[[str, type[UserEncoder]], None]) -> None:
    """Register user encoders (the user tower's sequence model).

    ``register(name, cls)``: ``cls(config, item_embedding, num_users)`` builds an
    ``nn.Module`` that keeps ``contracts.UserEncoder``; with a causal
    ``encode_sequence`` (a capability) it trains in sequence mode.
    """


@hookspec
def register_losses(register: Callable[[str, LossFactory], None]) -> None:
    """Register training objectives.

    ``register(name, factory)``: ``factory(config, item_counts)`` keeps
    ``contracts.LossFactory`` and returns a ``contracts.Loss``. In data-parallel
    training rows are this rank's; in-batch candidates are
    ``batch.columns(item_vecs)``, every rank's (see ``TrainBatch``).
    """


@hookspec
def register_retrievers(register: Callable[[str, type[Retriever]], None]) -> None:
    """Register top-K search backends.

    ``register(name, cls)``: ``cls`` keeps ``contracts.Retriever``. Its options
    are the config fields and ``extra`` keys that start with ``<name>_``
    (``hnsw_ef`` -> ``ef``). Retrievers must not import torch.
    """


@hookspec
def register_formats(register: Callable[[str, type[Format]], None]) -> None:
    """Register export formats and their runtimes.

    ``register(name, cls)``: ``cls()`` keeps ``contracts.Format``; its ``load``
    returns ``contracts.Towers``. Loading must not import torch when the
    format's runtime does not need it (the serving runtime imports no torch).
    """


@hookspec
def register_datasets(register: Callable[[str, DatasetLoader], None]) -> None:
    """Register data sources.

    ``register(name, load)``: ``load(config)`` keeps ``contracts.DatasetLoader``
    and returns a ``twotower.data.dataset.Dataset``.
    """
