"""The plugin manager and the registries built from it.

Built-in components are plugins like any other: the modules in
``DEFAULT_PLUGINS`` implement the hooks of ``hookspecs.py`` exactly as a
third-party package does through an entry point of group ``twotower``.

``TWOTOWER_PLUGINS`` (comma-separated entry-point names) limits which
third-party plugins load; set it to an empty string to load none.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
import re
import warnings
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from typing import Any

import pluggy

from . import hookspecs
from .contracts import capability
from .errors import TwoTowerError, TwoTowerWarning

DEFAULT_PLUGINS = (
    "twotower.builtins.user_encoders",
    "twotower.builtins.losses",
    "twotower.builtins.retrievers",
    "twotower.builtins.formats",
    "twotower.builtins.datasets",
)

# what a component's name may be: it is written in flags, in comma-separated lists
# (`bench --retrievers exact,hnsw`), in option keys (`<name>_<option>`) and folder names
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")

# registry kind -> (hook name, singular noun used in messages)
KINDS = {
    "user_encoders": ("register_user_encoders", "user encoder"),
    "losses": ("register_losses", "loss"),
    "retrievers": ("register_retrievers", "retriever"),
    "formats": ("register_formats", "format"),
    "datasets": ("register_datasets", "dataset"),
}


@dataclass
class PluginInfo:
    """One loaded (or failed) plugin, as `twotower plugins` shows it.

    ``name`` is the entry-point name (what ``TWOTOWER_PLUGINS`` lists),
    ``distribution`` the package that provides it (what ``pip install`` took).
    """

    name: str
    version: str
    builtin: bool
    distribution: str | None = None
    error: str | None = None
    registered: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Manager:
    pm: pluggy.PluginManager
    plugins: dict[str, PluginInfo]


@cache
def get_manager() -> Manager:
    """Create the plugin manager: built-ins first, then entry points."""
    pm = pluggy.PluginManager("twotower")
    pm.add_hookspecs(hookspecs)
    plugins: dict[str, PluginInfo] = {}
    from . import __version__

    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), module_name)
        plugins[module_name] = PluginInfo(module_name, __version__, True, "twotower")
    pm.check_pending()

    allowed = os.environ.get("TWOTOWER_PLUGINS")
    allowed_names = None if allowed is None else {n.strip() for n in allowed.split(",")} - {""}
    installed = entry_points(group="twotower")
    for ep in installed:
        if allowed_names is not None and ep.name not in allowed_names:
            continue
        version = ep.dist.version if ep.dist else "?"
        distribution = ep.dist.name if ep.dist else None
        if ep.name in plugins:  # two distributions claim one name: keep the first
            where = f"{ep.name} ({distribution or ep.value})"
            plugins[where] = PluginInfo(where, version, False, distribution)
            _report_failure(plugins, where, f"plugin name {ep.name!r} is already taken")
            continue
        plugins[ep.name] = PluginInfo(ep.name, version, False, distribution)
        try:
            _register(pm, ep.load(), ep.name)
        except (Exception, SystemExit) as exc:  # a broken plugin must not break the rest
            _report_failure(plugins, ep.name, f"{type(exc).__name__}: {exc}")
    for name in sorted((allowed_names or set()) - set(installed.names)):  # a misspelling
        names = ", ".join(sorted(installed.names)) or "none"
        said = (
            f"TWOTOWER_PLUGINS names it, but no installed package provides it (installed: {names})"
        )
        _report_failure(plugins, name, said)
    return Manager(pm, plugins)


def _register(pm: pluggy.PluginManager, plugin: Any, name: str) -> None:
    """Register ``plugin`` and check its hook names; on failure leave ``pm`` as it was.

    A misspelled hook (``register_retriever``) would otherwise be silently
    never called; the error suggests the hook that was meant.
    """
    if not hooks_of(plugin):  # listed as loaded, it would register nothing, silently
        raise pluggy.PluginValidationError(
            plugin,
            "it implements no twotower hook (a function marked @hookimpl, such as "
            "register_retrievers)",
        )
    try:
        pm.register(plugin, name)
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        if pm.get_plugin(name) is plugin:
            pm.unregister(plugin, name)
        hooks = [hook for hook, _ in KINDS.values()]
        hints = []
        for hook in hooks_of(plugin):
            meant = difflib.get_close_matches(hook, hooks, n=1)
            if hook not in hooks and meant:
                hints.append(f"{hook!r} is not a twotower hook (did you mean {meant[0]!r}?)")
        raise pluggy.PluginValidationError(plugin, "; ".join(hints) or str(exc)) from exc


def hooks_of(plugin: Any) -> list[str]:
    """Names of the ``@hookimpl`` functions of ``plugin``."""
    return [
        name
        for name in dir(plugin)
        if getattr(getattr(plugin, name, None), "twotower_impl", None) is not None
    ]


def _report_failure(plugins: dict[str, PluginInfo], plugin: str, error: str) -> None:
    """Record a broken plugin (shown by `twotower plugins`) and warn; never raise."""
    info = plugins.setdefault(plugin, PluginInfo(plugin, "?", builtin=False))
    info.error = error
    warnings.warn(f"twotower plugin {plugin!r} failed: {error}", TwoTowerWarning, stacklevel=3)


def add_plugin(plugin: Any, name: str) -> None:
    """Register a plugin object at run time (tests, notebooks); resets registries."""
    manager = get_manager()
    _register(manager.pm, plugin, name)
    manager.plugins[name] = PluginInfo(name, "runtime", builtin=False)
    registry.cache_clear()


def remove_plugin(name: str) -> None:
    manager = get_manager()
    manager.pm.unregister(name=name)
    manager.plugins.pop(name, None)
    registry.cache_clear()


class Registry:
    """Named components of one kind, each remembered with the plugin that registered it.

    A name two plugins register is a clash: it is neither plugin's, ``get``
    of it raises one line naming both, and every other name keeps working.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.noun = KINDS[kind][1]
        self._entries: dict[str, tuple[Any, str]] = {}
        self.clashes: dict[str, str] = {}  # name -> the error its use raises

    def add(self, name: str, component: Any, plugin: str) -> None:
        if name in self.clashes:
            self.clashes[name] += f" and by {plugin!r}"
        elif name in self._entries:
            first = self._entries.pop(name)[1]
            self.clashes[name] = (
                f"{self.noun} {name!r} is registered twice: by plugin {first!r} and by {plugin!r}"
            )
        else:
            self._entries[name] = (component, plugin)

    def names(self) -> list[str]:
        """The names that can be used (a clash is not one)."""
        return list(self._entries)

    def plugin_of(self, name: str) -> str:
        self.get(name)
        return self._entries[name][1]

    def get(self, name: str) -> Any:
        if name in self.clashes:
            raise TwoTowerError(self.clashes[name])
        if name not in self._entries:
            available = ", ".join(self.names()) or "none"
            raise TwoTowerError(f"unknown {self.noun} {name!r}; available: {available}")
        return self._entries[name][0]

    def __contains__(self, name: str) -> bool:
        return name in self._entries


@cache
def registry(kind: str) -> Registry:
    """Build the registry of one kind by calling its hook on every plugin."""
    manager = get_manager()
    hook_name = KINDS[kind][0]
    result = Registry(kind)
    found: list[tuple[str, Any, str]] = []
    for impl in getattr(manager.pm.hook, hook_name).get_hookimpls():
        collected: list[tuple[str, Any]] = []
        arguments = {
            "register": lambda name, component, into=collected: into.append((name, component))
        }
        try:  # an implementation may take fewer arguments than the spec (pluggy's rule)
            impl.function(**{arg: arguments[arg] for arg in impl.argnames})
        except (Exception, SystemExit) as exc:  # a plugin whose hook raises is reported
            _report_failure(manager.plugins, impl.plugin_name, f"{hook_name} raised {exc!r}")
            continue
        bad = [
            name for name, _ in collected if not (isinstance(name, str) and NAME.fullmatch(name))
        ]
        if bad:
            problem = (
                f"{hook_name} registered {bad[0]!r}: a name is letters, digits, '-' and '_', "
                "starting with a letter or digit"
            )
            _report_failure(manager.plugins, impl.plugin_name, problem)
            continue
        found += [(name, component, impl.plugin_name) for name, component in collected]
        info = manager.plugins.get(impl.plugin_name)
        if info is not None:
            info.registered[kind] = [name for name, _ in collected]
    for name, component, plugin in found:  # after recording, so `twotower plugins` shows both
        result.add(name, component, plugin)
    return result


def user_encoders() -> Registry:
    return registry("user_encoders")


def losses() -> Registry:
    return registry("losses")


def retrievers() -> Registry:
    return registry("retrievers")


def formats() -> Registry:
    return registry("formats")


def datasets() -> Registry:
    return registry("datasets")


def plugin_table() -> tuple[list[PluginInfo], list[str]]:
    """Every plugin with what it registers, and the registries' clashes (a name twice)."""
    problems = [message for kind in KINDS for message in registry(kind).clashes.values()]
    return list(get_manager().plugins.values()), problems


def option_prefix(name: str) -> str:
    """What component ``name``'s options start with (``transformer-cls``: ``transformer_cls_``)."""
    return name.replace("-", "_") + "_"


def component_options(config: Any, name: str, component: Any = None) -> dict[str, Any]:
    """Options for component ``name``: the config fields and ``extra`` keys named
    ``<name>_<option>`` for each option its ``option_schema`` declares (none without one).

    ``hnsw_ef=50`` in the config becomes ``ef=50`` for the ``hnsw`` retriever;
    a plugin retriever ``faiss`` reads ``extra["faiss_nprobe"]`` the same way.
    Only declared options are taken, so neither a core setting that shares the
    prefix (``max_history_len`` for a component named ``max``) nor the option
    of a component with a longer name (``hnsw_fast_ef`` of ``hnsw-fast``) is
    the component's; validation refuses the keys no component declares.
    ``component`` defaults to the one registered as ``name``.
    """
    prefix = option_prefix(name)
    if component is None:  # the kinds whose built-ins need no torch are looked in first
        kinds = sorted(KINDS, key=lambda kind: kind in ("user_encoders", "losses"))
        found = (registry(kind).get(name) for kind in kinds if name in registry(kind))
        component = next(found, None)
    named = {key: value for key, value in vars(config).items() if key != "extra"}
    named.update(getattr(config, "extra", {}) or {})
    declared = {prefix + option: option for option in declared_options(component)}
    return {declared[key]: value for key, value in named.items() if key in declared}


def declared_options(component: Any) -> list[str]:
    """The options ``component``'s ``option_schema`` declares (none without one)."""
    schema = capability(component, "option_schema")
    return [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else []
