"""The plugin system with throw-away plugins: one test per hook, and failure isolation.

Entry-point plugins are real: a ``*.dist-info`` folder (METADATA +
entry_points.txt) and a module written into ``tmp_path``, put on ``sys.path``,
found by ``importlib.metadata`` exactly as an installed package would be.
Run-time plugins go through ``plugins.add_plugin`` / ``remove_plugin``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pluggy
import pytest
import torch
from torch import nn

from twotower import api, plugins, testing
from twotower.cli import build_parser, main
from twotower.data.dataset import Dataset
from twotower.errors import TwoTowerError
from twotower.export.torchscript import TorchScriptFormat
from twotower.hookspecs import hookimpl
from twotower.losses import InBatchSoftmax
from twotower.retrievers.exact import ExactRetriever
from twotower.schema import at_least, option
from twotower.towers.mean import MeanEncoder
from twotower.validation import validate


def reset() -> None:
    """Forget the plugin manager and registries; the next lookup rebuilds them."""
    plugins.get_manager.cache_clear()
    plugins.registry.cache_clear()


@pytest.fixture()
def runtime_plugin() -> Iterator[Callable[[str, str, Callable], None]]:
    """``add(plugin_name, hook_name, hook)``: register a throw-away plugin until the test ends."""
    added: list[str] = []

    def add(plugin_name: str, hook_name: str, hook: Callable) -> None:
        plugins.add_plugin(types.SimpleNamespace(**{hook_name: hookimpl(hook)}), plugin_name)
        added.append(plugin_name)

    try:
        yield add
    finally:
        for name in added:
            plugins.remove_plugin(name)


class Site:
    """A folder on ``sys.path`` that holds installed-looking distributions."""

    def __init__(self, folder: Path, monkeypatch: pytest.MonkeyPatch):
        self.folder = folder
        self.monkeypatch = monkeypatch
        self.modules: list[str] = []

    def install(
        self, dist: str, version: str, modules: dict[str, str], points: dict[str, str] | None = None
    ) -> None:
        """A distribution with ``modules``; its entry points (group ``twotower``) map
        names to modules, by default one per module under the module's name."""
        info = self.folder / f"{dist.replace('-', '_')}-{version}.dist-info"  # as wheels name it
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        points = points or {name: name for name in modules}
        lines = "".join(f"{name} = {module}\n" for name, module in points.items())
        (info / "entry_points.txt").write_text(f"[twotower]\n{lines}")
        for name, source in modules.items():
            (self.folder / f"{name}.py").write_text(source)
            self.modules.append(name)

    def enable(self, *names: str) -> None:
        self.monkeypatch.setenv("TWOTOWER_PLUGINS", ",".join(names))
        importlib.invalidate_caches()  # importlib.metadata caches folder listings
        reset()


@pytest.fixture()
def site(tmp_path, monkeypatch) -> Iterator[Site]:
    monkeypatch.syspath_prepend(str(tmp_path))
    site = Site(tmp_path, monkeypatch)
    try:
        yield site
    finally:
        for name in site.modules:
            sys.modules.pop(name, None)
        reset()  # the environment is restored next; the registries rebuild from it


GOOD = """
from twotower.hookspecs import hookimpl


@hookimpl
def register_retrievers(register):
    from twotower.retrievers.exact import ExactRetriever

    register("good-exact", ExactRetriever)
"""

BROKEN = "raise RuntimeError('boom: this plugin cannot be imported')\n"

MISSPELLED = """
from twotower.hookspecs import hookimpl


@hookimpl
def register_retriever(register):  # the hook is register_retrievers
    register("never", object)
"""


def plugins_json(capsys, *flags: str) -> dict:
    assert main(["plugins", "--json", *flags]) == 0
    return json.loads(capsys.readouterr().out)


# --- failure isolation ---------------------------------------------------------------


def test_a_plugin_that_fails_to_import_is_reported_and_the_rest_works(site, capsys):
    site.install("twotower-broken", "1.2.3", {"tt_broken_plugin": BROKEN})
    site.install("twotower-good", "0.4.0", {"tt_good_plugin": GOOD})
    site.enable("tt_broken_plugin", "tt_good_plugin")
    with pytest.warns(UserWarning, match=r"'tt_broken_plugin' failed: RuntimeError: boom"):
        infos, problems = plugins.plugin_table()
    by_name = {info.name: info for info in infos}
    assert "boom" in by_name["tt_broken_plugin"].error
    assert by_name["tt_broken_plugin"].version == "1.2.3"
    assert by_name["tt_good_plugin"].error is None
    assert by_name["tt_good_plugin"].version == "0.4.0"
    assert by_name["tt_good_plugin"].distribution == "twotower-good"  # what pip installed
    assert by_name["tt_good_plugin"].registered == {"retrievers": ["good-exact"]}
    assert problems == []
    # everything else keeps working: the good plugin and every built-in
    assert plugins.retrievers().get("good-exact") is ExactRetriever
    for kind in plugins.KINDS:
        assert plugins.registry(kind).names()
    shown = {p["name"]: p for p in plugins_json(capsys)["plugins"]}
    assert set(shown) == {"tt_broken_plugin", "tt_good_plugin"}  # built-ins need --all
    assert "boom" in shown["tt_broken_plugin"]["error"]
    assert shown["tt_broken_plugin"]["distribution"] == "twotower-broken"
    assert plugins_json(capsys)["problems"] == [
        "plugin 'tt_broken_plugin' failed: RuntimeError: boom: this plugin cannot be imported"
    ]
    assert main(["plugins"]) == 0
    table = capsys.readouterr().out
    assert "tt_broken_plugin" in table and "failed: RuntimeError" in table
    assert "twotower-good" in table and "0.4.0" in table
    assert "twotower.builtins.losses" in {
        p["name"] for p in plugins_json(capsys, "--all")["plugins"]
    }


def test_twotower_plugins_variable_limits_which_entry_points_load(site):
    site.install("twotower-good", "0.4.0", {"tt_good_plugin": GOOD})
    site.enable("")
    assert "good-exact" not in plugins.retrievers()
    site.enable(" tt_good_plugin ,")  # spaces around names and an empty name are forgiven
    assert "good-exact" in plugins.retrievers()


def test_two_distributions_with_one_plugin_name_keep_the_first(site):
    other = GOOD.replace("good-exact", "other-exact")
    site.install("twotower-a", "1.0", {"tt_same_a": GOOD}, points={"tt_same": "tt_same_a"})
    site.install("twotower-b", "2.0", {"tt_same_b": other}, points={"tt_same": "tt_same_b"})
    site.enable("tt_same")
    with pytest.warns(UserWarning, match="plugin name 'tt_same' is already taken"):
        infos, problems = plugins.plugin_table()
    names = {info.name: info for info in infos if not info.builtin}
    (second,) = {"tt_same (twotower-a)", "tt_same (twotower-b)"} & set(names)
    assert names["tt_same"].error is None and names[second].error
    assert len({"good-exact", "other-exact"} & set(plugins.retrievers().names())) == 1
    assert problems == []


def test_two_plugins_registering_one_name_is_an_error_naming_both(runtime_plugin, capsys):
    runtime_plugin("first-plugin", "register_retrievers", lambda register: register("twin", 1))
    runtime_plugin("second-plugin", "register_retrievers", lambda register: register("twin", 2))
    message = (
        "retriever 'twin' is registered twice: by plugin 'first-plugin' and by 'second-plugin'"
    )
    with pytest.raises(TwoTowerError, match=re.escape(message)):
        plugins.retrievers().get("twin")
    assert "twin" not in plugins.retrievers().names() and "exact" in plugins.retrievers()
    # `twotower plugins` still runs, shows both and names the problem; commands using it fail
    listing = plugins_json(capsys)
    assert listing["problems"] == [message]
    assert {p["name"]: p["registered"] for p in listing["plugins"]} == {
        "first-plugin": {"retrievers": ["twin"]},
        "second-plugin": {"retrievers": ["twin"]},
    }
    assert main(["fit", "--dataset", "synthetic", "--epochs", "1", "--retriever", "twin"]) == 1
    assert message in capsys.readouterr().err


def test_a_name_taken_from_a_built_in_names_the_built_in(runtime_plugin):
    runtime_plugin("shadow", "register_losses", lambda register: register("inbatch-softmax", 0))
    with pytest.raises(TwoTowerError, match=r"'twotower\.builtins\.losses' and by 'shadow'"):
        plugins.losses().get("inbatch-softmax")
    assert "logq-softmax" in plugins.losses()  # the other names keep working


def test_a_misspelled_hook_is_caught_by_check_pending():
    plugin = types.SimpleNamespace(register_retriever=hookimpl(lambda register: None))
    with pytest.raises(pluggy.PluginValidationError, match="did you mean 'register_retrievers'"):
        plugins.add_plugin(plugin, "misspelled")
    assert plugins.get_manager().pm.get_plugin("misspelled") is None  # nothing left behind
    assert "misspelled" not in {info.name for info in plugins.plugin_table()[0]}


def test_a_misspelled_hook_in_an_installed_plugin_is_reported(site):
    site.install("twotower-typo", "0.1.0", {"tt_typo_plugin": MISSPELLED})
    site.enable("tt_typo_plugin")
    with pytest.warns(UserWarning, match="did you mean 'register_retrievers'"):
        infos, _ = plugins.plugin_table()
    (typo,) = [info for info in infos if info.name == "tt_typo_plugin"]
    assert "'register_retriever' is not a twotower hook" in typo.error
    assert "exact" in plugins.retrievers()


def test_a_hook_that_raises_is_reported_and_the_rest_works(runtime_plugin):
    def explode(register):
        raise ValueError("no index library")

    runtime_plugin("exploding", "register_retrievers", explode)
    with pytest.warns(UserWarning, match="'exploding' failed: register_retrievers raised"):
        names = plugins.retrievers().names()
    assert {"exact", "hnsw"} <= set(names)
    (info,) = [i for i in plugins.plugin_table()[0] if i.name == "exploding"]
    assert "no index library" in info.error


def test_a_hook_may_take_fewer_arguments_than_the_spec(runtime_plugin):
    runtime_plugin("argless", "register_losses", lambda: None)
    assert "inbatch-softmax" in plugins.losses()
    (info,) = [i for i in plugins.plugin_table()[0] if i.name == "argless"]
    assert info.error is None and info.registered["losses"] == []


# --- one test per hook ---------------------------------------------------------------


def assert_registered(kind: str, name: str, component, plugin: str) -> None:
    registry = plugins.registry(kind)
    assert registry.get(name) is component
    assert registry.plugin_of(name) == plugin
    (info,) = [i for i in plugins.plugin_table()[0] if i.name == plugin]
    assert info.registered[kind] == [name]


class PluginEncoder(MeanEncoder):
    """A throw-away user encoder."""


def test_register_user_encoders(runtime_plugin):
    runtime_plugin(
        "enc", "register_user_encoders", lambda register: register("mine", PluginEncoder)
    )
    assert_registered("user_encoders", "mine", PluginEncoder, "enc")
    assert build_parser().parse_args(["fit", "--user-encoder", "mine"]).user_encoder == "mine"
    encoder = plugins.user_encoders().get("mine")(testing.tiny_config(), nn.Embedding(5, 16), 3)
    history = torch.tensor([[0, 1, 2]])
    vectors = encoder(torch.tensor([1]), history, history != 0)
    assert tuple(vectors.shape) == (1, 16)


class PluginLoss(InBatchSoftmax):
    """A throw-away loss."""


def test_register_losses(runtime_plugin):
    runtime_plugin("loss", "register_losses", lambda register: register("my-loss", PluginLoss))
    assert_registered("losses", "my-loss", PluginLoss, "loss")
    assert build_parser().parse_args(["fit", "--loss", "my-loss"]).loss == "my-loss"
    testing.check_loss("my-loss")


class PluginRetriever(ExactRetriever):
    """A throw-away retriever."""


def test_register_retrievers(runtime_plugin):
    runtime_plugin("ret", "register_retrievers", lambda register: register("mine", PluginRetriever))
    assert_registered("retrievers", "mine", PluginRetriever, "ret")
    assert build_parser().parse_args(["recommend", "--user-id", "1", "--retriever", "mine"])
    testing.check_retriever(plugins.retrievers().get("mine"))


class PluginFormat(TorchScriptFormat):
    """A throw-away export format."""


def test_register_formats(runtime_plugin):
    runtime_plugin("fmt", "register_formats", lambda register: register("mine", PluginFormat))
    assert_registered("formats", "mine", PluginFormat, "fmt")
    assert build_parser().parse_args(["export", "--format", "mine"]).format == "mine"


def tiny_dataset(config) -> Dataset:
    """Three users with four positives each over five items."""
    rows = [(str(u), f"item{(u + t) % 5}", 100 * u + t) for u in range(3) for t in range(4)]
    return Dataset("tiny", pd.DataFrame(rows, columns=["user", "item", "timestamp"]))


def test_register_datasets(runtime_plugin):
    runtime_plugin("data", "register_datasets", lambda register: register("tiny", tiny_dataset))
    assert_registered("datasets", "tiny", tiny_dataset, "data")
    config = build_parser().parse_args(["fit", "--dataset", "tiny"])
    assert config.dataset == "tiny"
    split = api.prepare(testing.tiny_config(dataset="tiny"))
    assert (split.num_users, split.num_items) == (3, 5)


@pytest.mark.parametrize("name", [123, "", " ", "-dash", "a,b", "x y", "a.b", "é"])
def test_a_name_that_cannot_be_written_in_a_flag_or_list_fails_its_plugin_only(
    runtime_plugin, name
):
    runtime_plugin("misnamed", "register_retrievers", lambda register: register(name, object))
    rule = "a name is letters, digits, '-' and '_', starting with a letter or digit"
    with pytest.warns(UserWarning, match=re.escape(f"registered {name!r}: {rule}")):
        names = plugins.retrievers().names()
    assert "exact" in names and name not in names
    (info,) = [i for i in plugins.plugin_table()[0] if i.name == "misnamed"]
    assert rule in info.error


def test_a_plugin_module_without_hooks_is_reported_not_listed_as_ok(site, capsys):
    """A hook written without @hookimpl is never called: the plugin is a failure, not ok."""
    site.install(
        "twotower-unmarked", "0.1.0", {"tt_unmarked": "def register_retrievers(r): pass\n"}
    )
    site.enable("tt_unmarked")
    with pytest.warns(UserWarning, match="'tt_unmarked' failed: .*implements no twotower hook"):
        assert main(["plugins"]) == 0
    assert "implements no twotower hook" in capsys.readouterr().out.replace("\n", "")


def test_a_component_without_an_option_schema_takes_no_options():
    with pytest.raises(TwoTowerError) as refused:
        validate(testing.tiny_config(extra={"transformer_depth": 3}))
    assert str(refused.value) == (
        "--set transformer_depth: user encoder 'transformer' takes no options "
        "(a component lists the ones it reads in its option_schema)"
    )


def test_a_name_two_kinds_share_takes_no_options(runtime_plugin):
    runtime_plugin(
        "hnsw-data", "register_datasets", lambda register: register("hnsw", tiny_dataset)
    )
    validate(testing.tiny_config(hnsw_m=8))  # its own settings stay the retriever's
    with pytest.raises(TwoTowerError, match="retriever 'hnsw' and dataset 'hnsw' share one name"):
        validate(testing.tiny_config(extra={"hnsw_seed": 3}))


def retriever_taking(name: str) -> type:
    """Exact search with an option schema declaring one integer option, ``name``."""
    schema = dataclasses.make_dataclass(f"{name}_options", [(name, int, option(2, at_least(1)))])
    return type(f"Taking_{name}", (ExactRetriever,), {"option_schema": schema})


MaxRetriever = retriever_taking("depth")


def test_a_core_setting_sharing_a_component_s_prefix_is_not_its_option(runtime_plugin):
    """A retriever named "max" must not claim max_history_len; one named "num" without a
    schema must not be built with num_layers, num_heads, ..."""
    runtime_plugin(
        "prefixes",
        "register_retrievers",
        lambda register: (register("max", MaxRetriever), register("num", ExactRetriever)),
    )
    config = validate(testing.tiny_config(extra={"max_depth": 3}))  # no error for max_*
    assert plugins.component_options(config, "max") == {"depth": 3}
    assert plugins.component_options(config, "num") == {}
    assert plugins.component_options(config, "hnsw") == {
        "m": config.hnsw_m,
        "ef_construction": config.hnsw_ef_construction,
        "ef": config.hnsw_ef,
    }


def test_an_option_belongs_to_the_component_with_the_longest_name(runtime_plugin):
    """With retrievers hnsw and hnsw-fast, hnsw_fast_ef is hnsw-fast's option: hnsw is
    neither built nor checked with a "fast_ef" it does not know."""
    fast = type("FastHNSW", (MaxRetriever,), {})
    runtime_plugin("fast", "register_retrievers", lambda register: register("hnsw-fast", fast))
    config = validate(testing.tiny_config(hnsw_ef=7, extra={"hnsw_fast_depth": 3}))
    assert plugins.component_options(config, "hnsw-fast") == {"depth": 3}
    assert plugins.component_options(config, "hnsw")["ef"] == 7
    assert "fast_depth" not in plugins.component_options(config, "hnsw")


class CannotLoad:
    """Builds and searches, but cannot load or save an index."""

    build, search = ExactRetriever.build, ExactRetriever.search


@pytest.mark.parametrize(
    ("component", "lacks"), [(CannotLoad, "load, save"), (42, "build, load, search, save")]
)
def test_a_component_without_its_contract_s_methods_is_refused_before_any_data_is_read(
    runtime_plugin, capsys, tmp_path, component, lacks
):
    runtime_plugin("odd", "register_retrievers", lambda register: register("odd", component))
    data = tmp_path / "data"
    code = main(["fit", "--dataset", "synthetic", "--data-dir", str(data), "--retriever", "odd"])
    err = capsys.readouterr().err
    assert code == 1 and err.strip() == (
        f"error: retriever 'odd' (plugin 'odd') does not keep contracts.Retriever: it lacks {lacks}"
    )
    assert not data.exists()


def test_an_option_two_components_spell_alike_is_refused(runtime_plugin):
    """short's option long_x and short-long's option x are both --set short_long_x."""
    runtime_plugin(
        "alike",
        "register_retrievers",
        lambda register: (
            register("short", retriever_taking("long_x")),
            register("short-long", retriever_taking("x")),
        ),
    )
    with pytest.raises(TwoTowerError) as refused:
        validate(testing.tiny_config(extra={"short_long_x": 3}))
    assert str(refused.value) == (
        "--set short_long_x: an option of retriever 'short-long' and option long_x of "
        "retriever 'short' are spelled alike, so the key could be either's; rename one of them"
    )


def test_the_command_line_warns_of_a_broken_plugin_in_one_line(site, tmp_path):
    """Not Python's two lines (a source path, then the line that warned)."""
    site.install("twotower-broken", "1.2.3", {"tt_broken_plugin": BROKEN})
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "TWOTOWER_PLUGINS": "tt_broken_plugin"}
    command = [sys.executable, "-m", "twotower", "plugins", "--json"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "warning: twotower plugin 'tt_broken_plugin' failed: RuntimeError: boom: this plugin "
        "cannot be imported"
    ]


def test_a_misspelled_name_in_twotower_plugins_is_reported(site, capsys):
    """Else the plugin is left out without a word, and only a later unknown name shows it."""
    site.install("twotower-good", "0.4.0", {"tt_good_plugin": GOOD})
    site.enable("tt_good_plugin", "tt_god_plugin")
    with pytest.warns(UserWarning, match=r"'tt_god_plugin' failed: TWOTOWER_PLUGINS names it"):
        infos, _ = plugins.plugin_table()
    error = {info.name: info.error for info in infos}["tt_god_plugin"]
    assert re.fullmatch(
        r"TWOTOWER_PLUGINS names it, but no installed package provides it \(installed: "
        r"(.+, )?tt_good_plugin(, .+)?\)",
        error,
    )
    assert plugins.retrievers().get("good-exact") is ExactRetriever
    assert plugins_json(capsys)["problems"] == [f"plugin 'tt_god_plugin' failed: {error}"]


def test_a_plugin_that_exits_on_import_is_reported_and_the_rest_works(site, capsys):
    """sys.exit in a plugin module must not end every command in silence."""
    site.install("twotower-exits", "0.1.0", {"tt_exiting_plugin": "import sys\nsys.exit(0)\n"})
    site.enable("tt_exiting_plugin")
    with pytest.warns(UserWarning, match="'tt_exiting_plugin' failed: SystemExit: 0"):
        assert "exact" in plugins.retrievers().names()
    assert main(["plugins"]) == 0 and "failed: SystemExit" in capsys.readouterr().out


def test_names_and_errors_with_brackets_are_shown_as_written(runtime_plugin, capsys):
    """The table is rich markup: a plugin's words must not be read as tags."""

    def exploding(register):
        raise TypeError("expected list[str], not [/red] int")

    runtime_plugin(
        "brackets", "register_retrievers", lambda register: register("x[/red]y", ExactRetriever)
    )
    runtime_plugin("brackets-raising", "register_losses", exploding)
    with pytest.warns(UserWarning):
        assert main(["plugins"]) == 0
    table = capsys.readouterr().out
    assert "x[/red]y" in table and "expected list[str], not [/red] int" in table.replace("\n", "")


class ExitsOnBuild(ExactRetriever):
    @classmethod
    def build(cls, item_vectors, **params):
        raise SystemExit(0)


def test_a_component_that_calls_sys_exit_is_one_error_naming_it(runtime_plugin, tmp_path):
    runtime_plugin("exits", "register_retrievers", lambda register: register("exits", ExitsOnBuild))
    with pytest.raises(TwoTowerError, match=r"retriever 'exits' could not build its index"):
        api.fit(testing.tiny_config(data_dir=str(tmp_path), retriever="exits"), progress=False)
    assert not (tmp_path / "artifacts").exists()
