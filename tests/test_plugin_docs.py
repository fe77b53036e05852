"""Meta-tests that keep the plugin surface honest (datasette's habit).

Every hookspec must have a test named after it in tests/test_plugins.py and a
heading in docs/plugins.md whose signature matches the spec; each hook's
section shows the Protocols of ``twotower.contracts`` as they are written,
the hook names them in its signature, and the capability table is the one
``contracts.CAPABILITIES`` holds; every example in the docs compiles, and
each hook's example runs and registers something.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from twotower import api, contracts, hookspecs, plugins, testing
from twotower.errors import TwoTowerError
from twotower.validation import validate

REPO = Path(__file__).resolve().parents[1]
DOCS = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
HOOKS = {
    name: spec
    for name, spec in vars(hookspecs).items()
    if callable(spec) and hasattr(spec, "twotower_spec")
}
HEADING = re.compile(r"^(#+) `(\w+)\(([^)]*)\)`\s*$", re.MULTILINE)
CODE = re.compile(r"```python\n(.*?)```", re.DOTALL)


def documented_hooks() -> dict[str, tuple[list[str], str]]:
    """hook name -> (argument names in its heading, the text of its section)."""
    headings = list(HEADING.finditer(DOCS))
    sections = {}
    for match in headings:
        level = len(match.group(1))
        end = re.compile(rf"^#{{1,{level}}} ", re.MULTILINE).search(DOCS, match.end())
        arguments = [a.strip() for a in match.group(3).split(",") if a.strip()]
        sections[match.group(2)] = (arguments, DOCS[match.end() : end.start() if end else None])
    return sections


def test_hookspecs_are_found():
    assert set(HOOKS) == {hook for hook, _ in plugins.KINDS.values()}


def test_every_hook_has_a_test_named_after_it():
    tree = ast.parse((REPO / "tests" / "test_plugins.py").read_text(encoding="utf-8"))
    tests = [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name[:5] == "test_"]
    untested = [hook for hook in HOOKS if not any(hook in test for test in tests)]
    assert not untested, f"hooks without a test named after them in test_plugins.py: {untested}"


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_every_hook_has_a_heading_with_its_signature(hook):
    sections = documented_hooks()
    assert hook in sections, f"docs/plugins.md has no heading `{hook}(...)`"
    arguments, _ = sections[hook]
    assert arguments == list(inspect.signature(HOOKS[hook]).parameters), (
        f"docs/plugins.md documents {hook}({', '.join(arguments)})"
    )


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_every_hook_section_shows_its_contracts_as_written(hook):
    _, section = documented_hooks()[hook]
    for protocol in contracts.CONTRACTS[hook]:
        source = inspect.getsource(protocol)
        assert f"```python\n{source}```" in section, (
            f"docs/plugins.md, {hook}: show contracts.{protocol.__name__} as written:\n{source}"
        )


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_every_hook_names_what_it_registers(hook):
    registered = contracts.CONTRACTS[hook][0].__name__
    assert registered in HOOKS[hook].__annotations__["register"]
    assert f"contracts.{registered}" in inspect.getdoc(HOOKS[hook])


def capability_table() -> str:
    """``contracts.CAPABILITIES`` as the Markdown table docs/plugins.md shows."""
    rows = ["| capability | of | without it | what it is |", "| --- | --- | --- | --- |"]
    for c in contracts.CAPABILITIES.values():
        kinds = "every kind" if c.kinds is None else ", ".join(c.kinds)
        rows.append(f"| `{c.name}` | {kinds.replace('_', ' ')} | `{c.default!r}` | {c.meaning} |")
    return "\n".join(rows) + "\n"


def test_the_capability_table_is_the_one_contracts_holds():
    table = capability_table()
    assert table in DOCS, f"docs/plugins.md must show the capabilities as:\n{table}"


def test_every_documented_hook_exists():
    assert set(documented_hooks()) <= set(HOOKS)


def test_every_code_example_compiles():
    for number, source in enumerate(CODE.findall(DOCS), start=1):
        compile(source, f"docs/plugins.md, python block {number}", "exec")


def run_example(hook: str) -> tuple[str, object]:
    """Execute the first example (a block with a hook) of ``hook``'s section; register it.

    Returns the one name it registers and its component; the caller removes
    the plugin ``docs-example``.
    """
    source = next(code for code in CODE.findall(documented_hooks()[hook][1]) if "@hookimpl" in code)
    module = types.ModuleType(f"docs_example_{hook}")
    sys.modules[module.__name__] = module  # as an installed plugin's module is (dataclasses)
    exec(compile(source, f"docs/plugins.md, {hook}", "exec"), module.__dict__)
    plugins.add_plugin(module, "docs-example")
    kind = next(kind for kind, (name, _) in plugins.KINDS.items() if name == hook)
    registry = plugins.registry(kind)
    (name,) = [n for n in registry.names() if registry.plugin_of(n) == "docs-example"]
    return name, registry.get(name)


@pytest.fixture()
def example():
    try:
        yield run_example
    finally:
        if plugins.get_manager().pm.get_plugin("docs-example") is not None:
            plugins.remove_plugin("docs-example")
        for name in [n for n in sys.modules if n.startswith("docs_example_")]:
            del sys.modules[name]


def test_user_encoder_example_runs(example):
    _, cls = example("register_user_encoders")
    encoder = cls(testing.tiny_config(), torch.nn.Embedding(6, 16, padding_idx=0), 3).eval()
    history = torch.tensor([[0, 0], [4, 5]])  # a cold user and a two-item history
    vectors = encoder(torch.tensor([0, 2]), history, history != 0)
    assert vectors.shape == (2, 16) and torch.isfinite(vectors).all()


def test_loss_example_keeps_the_contract(example):
    name, factory = example("register_losses")
    testing.check_loss(name)
    config = validate(testing.tiny_config(loss=name, extra={"margin_softmax_margin": 0.3}))
    assert factory(config, None).margin == 0.3
    for wrong, says in (("margin_softmax_margin", ">= 0"), ("margin_softmax_m", "known")):
        with pytest.raises(TwoTowerError, match=says):
            validate(testing.tiny_config(loss=name, extra={wrong: -1.0}))


def test_retriever_example_keeps_the_contract(example):
    _, cls = example("register_retrievers")
    testing.check_retriever(cls)


def test_format_example_keeps_the_contract(example):
    _, cls = example("register_formats")
    testing.check_format(cls)


def test_dataset_example_loads_and_splits(example):
    name, _ = example("register_datasets")
    split = api.prepare(testing.tiny_config(dataset=name))
    assert (split.num_users, split.num_items) == (4, 6)
    assert split.genre_names == ["comedy", "drama"]


# a line "# Name (path)" and the rest of its code block: lines of a plugin's file
EXCERPT = re.compile(r"^# [\w.]+ \(([\w/.-]+\.py)\)(?:, abridged)?\n(.*)", re.M | re.S)


def test_every_excerpt_quotes_its_source():
    """A block headed ``# Name (path)`` shows lines of that plugin file as they are written."""
    excerpts = [match for code in CODE.findall(DOCS) for match in EXCERPT.findall(code)]
    assert len(excerpts) >= 2
    for path, excerpt in excerpts:
        (source,) = REPO.glob(f"plugins/*/{path}")
        written = {line.strip() for line in source.read_text(encoding="utf-8").splitlines()}
        quoted = [line.strip() for line in excerpt.splitlines() if line.strip() not in ("", "...")]
        assert quoted and set(quoted) <= written, (path, set(quoted) - written)
