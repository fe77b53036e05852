"""One validation of every run setting, before any data is read.

A run that would fail on a setting must fail in its first second, not after
training: ``validate`` checks a whole ``TwoTowerConfig`` and every command
calls it before touching data. Types come from the config's annotations,
allowed values from ``RULES`` below, and what only a component knows is
asked of the component (its capabilities, ``contracts.CAPABILITIES``):

- ``option_schema``: a dataclass of the ``<name>_*`` settings the component reads
  (``--set faiss_nprobe=16``, ``hnsw_m``); values are type- and range-checked
  and an unknown key is an error.
- ``settings``: the config fields only this component reads (the files
  dataset's ``interactions``); another component given them is a contradiction.
- ``check_config(config)``: how settings combine for it (attention heads
  must divide a Transformer's width); it raises ``TwoTowerError``.

Every failure is one line naming the setting and the values it accepts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

from . import plugins
from .config import MAX_THREADS, TwoTowerConfig
from .contracts import CONTRACTS, cannot_train_in_sequence, capability, missing
from .errors import TwoTowerError
from .schema import Allowed, at_least, between, check, one_of, positive

# config fields whose values name a registered component
REGISTRY_OF = {
    "dataset": "datasets",
    "user_encoder": "user_encoders",
    "loss": "losses",
    "retriever": "retrievers",
}

# Sizes have upper bounds far past any model this trains, so that a slip of the keyboard
# (a dim of 100000000) is refused here instead of filling the machine's memory.
RULES: dict[str, Allowed] = {
    "min_user_positives": at_least(3),  # one train, one validation, one test item
    "max_history_len": between(1, 10_000),
    "embedding_dim": between(1, 8192),
    "num_layers": between(1, 256),
    "num_heads": between(1, 1024),
    "dropout": between(0, 1, high_open=True),
    "init_std": positive(),
    "temperature": positive(),
    "min_temperature": positive(),
    "max_temperature": positive(),
    "train_mode": one_of("auto", "prefix", "sequence"),
    "num_negatives": between(1, 2**20),
    "batch_size": between(1, 2**20),
    "sequence_batch_size": between(1, 2**20),
    "lr": positive(),
    "weight_decay": at_least(0),
    "lr_schedule": one_of("constant", "cosine"),
    "ema_decay": between(0, 1, high_open=True),
    "epochs": at_least(1),
    "patience": at_least(1),
    "seed": between(0, 2**32 - 1),  # numpy's seed range
    "num_threads": between(1, MAX_THREADS),
    "k_eval": at_least(1),
}


def check_settings(values: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Types and ranges of some settings (a TOML file's, say); returns them typed."""
    return check(TwoTowerConfig, values, where=where, rules=RULES)


def validate(config: TwoTowerConfig) -> TwoTowerConfig:
    """Check every setting of ``config`` and how they combine; return it with typed values."""
    if not isinstance(config, TwoTowerConfig):
        raise TwoTowerError(
            f"expected a TwoTowerConfig, not {type(config).__name__} "
            "(TwoTowerConfig.from_dict reads a dict)"
        )
    values = check_settings(dataclasses.asdict(config))
    config = dataclasses.replace(config, **values)
    if config.min_temperature > config.max_temperature:
        raise TwoTowerError(
            f"min_temperature ({config.min_temperature:g}) must not exceed "
            f"max_temperature ({config.max_temperature:g})"
        )
    if not config.min_temperature <= config.temperature <= config.max_temperature:
        raise TwoTowerError(
            f"temperature must be in [min_temperature, max_temperature] = "
            f"[{config.min_temperature:g}, {config.max_temperature:g}], not {config.temperature:g}"
        )
    chosen = {
        name: plugins.registry(kind).get(getattr(config, name))
        for name, kind in REGISTRY_OF.items()
    }
    for name, component in chosen.items():
        check_contract(REGISTRY_OF[name], getattr(config, name), component)
    check_component_settings(config)
    check_plugin_options(config)
    encoder = chosen["user_encoder"]
    if config.train_mode == "sequence" and capability(encoder, "encode_sequence") is None:
        raise cannot_train_in_sequence(config.user_encoder)
    for component in chosen.values():
        check_config = capability(component, "check_config")
        if check_config is not None:
            check_config(config)
    return config


def check_contract(kind: str, name: str, component: Any) -> None:
    """The component chosen has every method its contract names: one that lacks one
    would fail only later, after training, in a folder the user never named."""
    protocol = CONTRACTS[plugins.KINDS[kind][0]][0]
    lacking = missing(component, protocol)
    if lacking:
        registry = plugins.registry(kind)
        raise TwoTowerError(
            f"{registry.noun} {name!r} (plugin {registry.plugin_of(name)!r}) does not keep "
            f"contracts.{protocol.__name__}: it lacks {', '.join(lacking)}"
        )


# --- settings one component reads ----------------------------------------------------------


def readers(setting: str) -> list[str]:
    """The datasets that declare ``setting`` among their ``settings``."""
    registry = plugins.datasets()
    names = registry.names()
    return [name for name in names if setting in capability(registry.get(name), "settings")]


def default_dataset(values: Mapping[str, Any]) -> str | None:
    """The dataset a run means when it names none but gives a setting only one dataset reads
    (``--interactions FILE`` means the files dataset)."""
    for setting, value in values.items():
        found = readers(setting) if value is not None else []
        if len(found) == 1:
            return found[0]
    return None


def check_component_settings(config: TwoTowerConfig) -> None:
    """A setting that only other components read contradicts the chosen one."""
    for name, kind in REGISTRY_OF.items():
        chosen = getattr(config, name)
        registry = plugins.registry(kind)
        owned = set(capability(registry.get(chosen), "settings"))
        for other in registry.names():
            for setting in capability(registry.get(other), "settings"):
                if setting not in owned and getattr(config, setting, None) is not None:
                    raise TwoTowerError(
                        f"{setting} is read by {registry.noun} {other!r} only, "
                        f"but the {name} is {chosen!r}"
                    )


# --- plugin options (--set KEY=VALUE) -------------------------------------------------------


def components() -> Iterator[tuple[str, str, Any]]:
    """(registry kind, name, component) of everything registered."""
    for kind in plugins.KINDS:
        registry = plugins.registry(kind)
        for name in registry.names():
            yield kind, name, registry.get(name)


def check_plugin_options(config: TwoTowerConfig) -> None:
    """Every ``--set`` key belongs to one component, which checks all of its options.

    A key belongs to the component with the longest matching name, so
    ``transformer_cls_x`` is an option of ``transformer-cls``, not of
    ``transformer``. A component without an ``option_schema`` takes no
    options, and a name that components of two kinds share takes none
    either: the key could not say whose option it is.
    """
    core = {f.name for f in dataclasses.fields(TwoTowerConfig)}
    owners: dict[str, list[tuple[str, str, Any]]] = {}
    for kind, name, component in components():
        owners.setdefault(plugins.option_prefix(name), []).append((kind, name, component))

    prefixes = sorted(owners, key=len, reverse=True)

    def owner(key: str) -> str | None:
        return next((prefix for prefix in prefixes if key.startswith(prefix)), None)

    def noun(kind: str, name: str) -> str:
        return f"{plugins.KINDS[kind][1]} {name!r}"

    for key in config.extra:
        if not isinstance(key, str):
            raise TwoTowerError(f"plugin option names are strings, not {key!r}")
        if key in core:
            where = (
                "it is the table of plugin options itself"
                if key == "extra"
                else f"use --{key.replace('_', '-')} or the TOML key {key} where a command has it"
            )
            raise TwoTowerError(f"--set {key}: {key} is a run setting of its own; {where}")
        prefix = owner(key)
        if prefix is None:
            raise TwoTowerError(
                f"unknown plugin option {key!r}: a plugin option starts with the name of the "
                f"component that reads it ({', '.join(sorted(owners))})"
            )
        claimants = owners[prefix]
        if len(claimants) > 1:
            both = " and ".join(noun(kind, name) for kind, name, _ in claimants)
            raise TwoTowerError(
                f"--set {key}: {both} share one name, so the option could be either's; "
                "rename one of them"
            )
        kind, name, component = claimants[0]
        if not dataclasses.is_dataclass(capability(component, "option_schema")):
            raise TwoTowerError(
                f"--set {key}: {noun(kind, name)} takes no options "
                "(a component lists the ones it reads in its option_schema)"
            )
        for shorter in (p for p in prefixes if len(p) < len(prefix) and key.startswith(p)):
            for other_kind, other, candidate in owners[shorter]:
                if key[len(shorter) :] in plugins.declared_options(candidate):
                    raise TwoTowerError(
                        f"--set {key}: an option of {noun(kind, name)} and option "
                        f"{key[len(shorter) :]} of {noun(other_kind, other)} are spelled "
                        "alike, so the key could be either's; rename one of them"
                    )
    for prefix, claimants in owners.items():
        (kind, name, component), *others = claimants
        schema = capability(component, "option_schema")
        if not others and dataclasses.is_dataclass(schema):
            given = {  # every key it owns, declared or not: an unknown one is refused
                key[len(prefix) :]: value
                for key, value in config.extra.items()
                if owner(key) == prefix
            }
            check(
                schema,
                {**plugins.component_options(config, name, component), **given},
                spell=lambda field, prefix=prefix: prefix + field,
                owner=noun(kind, name),
            )
