"""A format plugin that breaks its contract is refused in one line naming it, and leaves no
bundle: a failing export, quantization or load, a wrong list of written files, a file over
one the bundle keeps for itself, or towers answering in another shape or type."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import registering, run

from twotower.cli import main
from twotower.errors import TwoTowerError
from twotower.export.bundle import export_bundle
from twotower.export.torchscript import TorchScriptFormat
from twotower.testing import check_format


class ExportRaises(TorchScriptFormat):
    def export(self, model, out_dir: Path) -> list[Path]:
        raise OSError("no space left on device")


class ReturnsNothing(TorchScriptFormat):
    def export(self, model, out_dir: Path) -> list[Path]:
        super().export(model, out_dir)
        return []


class WritesOutside(TorchScriptFormat):
    def export(self, model, out_dir: Path) -> list[Path]:
        escaped = Path(out_dir).parent / "escaped.pt"
        escaped.write_bytes(b"graph")
        return [*super().export(model, out_dir), escaped]


class WritesConfig(TorchScriptFormat):
    def export(self, model, out_dir: Path) -> list[Path]:
        (Path(out_dir) / "config.json").write_text("{}")
        return [*super().export(model, out_dir), Path(out_dir) / "config.json"]


class LoadRaises(TorchScriptFormat):
    def load(self, bundle_dir: Path, threads: int = 1):
        raise ValueError("graph version 9 is not supported")


class DoubleItems(TorchScriptFormat):
    def load(self, bundle_dir: Path, threads: int = 1):
        towers = super().load(bundle_dir, threads)
        encode_items = towers.encode_items
        towers.encode_items = lambda ids: encode_items(ids).astype(np.float64)
        return towers


class ShortUsers(TorchScriptFormat):
    def load(self, bundle_dir: Path, threads: int = 1):
        towers = super().load(bundle_dir, threads)
        encode_users = towers.encode_users
        towers.encode_users = lambda *inputs: encode_users(*inputs)[:1]
        return towers


class GraphsOfObjects(TorchScriptFormat):
    """Describes its graphs with Python objects that manifest.json cannot hold."""

    def load(self, bundle_dir: Path, threads: int = 1):
        towers = super().load(bundle_dir, threads)
        towers.graphs = lambda: {"user": {"inputs": {"user_ids", "history"}}}
        return towers


class GraphsOfTuples(TorchScriptFormat):
    """Describes its graphs with tuples: JSON reads them back as lists, never equal."""

    def load(self, bundle_dir: Path, threads: int = 1):
        towers = super().load(bundle_dir, threads)
        towers.graphs = lambda: {"user": {"inputs": ("user_ids", "history")}}
        return towers


BROKEN = {
    "export-raises": (ExportRaises, "could not export the towers (OSError: no space left"),
    "returns-nothing": (ReturnsNothing, "it returned [], not the list of files it wrote"),
    "writes-outside": (WritesOutside, "escaped.pt', not a file in the bundle"),
    "writes-config": (WritesConfig, "it wrote config.json, a file the bundle keeps for its own"),
    "load-raises": (LoadRaises, "could not load the towers it exported (ValueError: graph"),
    "double-items": (DoubleItems, "the item tower returned a float64 array of shape"),
    "short-users": (ShortUsers, "the user tower returned a float32 array of shape (1, "),
    "graphs-of-objects": (GraphsOfObjects, "graphs() returned {'user': {'inputs': {"),
    "graphs-of-tuples": (GraphsOfTuples, "not a JSON object"),
}


@pytest.fixture(scope="module")
def registered() -> Iterator[None]:
    broken = {name: cls for name, (cls, _) in BROKEN.items()}
    with registering("register_formats", broken, "broken-formats"):
        yield


@pytest.mark.parametrize("name", BROKEN)
def test_a_format_breaking_its_contract_is_refused_by_name(
    registered, fitted_artifacts, tmp_path, name
):
    target = tmp_path / "bundle"
    with pytest.raises(TwoTowerError) as refused:
        export_bundle(fitted_artifacts, target, format=name)
    message = str(refused.value)
    assert message.startswith(f"format {name!r}") and "\n" not in message
    assert BROKEN[name][1] in message
    assert not target.exists()


KIT_SAYS = {  # what the testing kit says of each: the same rule, in its own words
    "export-raises": "ExportRaises': OSError: no space left on device",
    "returns-nothing": "it returned [], not the list of files it wrote",
    "writes-outside": "escaped.pt', not a file in the bundle",
    "writes-config": "it wrote config.json, a file the bundle keeps for its own",
    "load-raises": "LoadRaises': ValueError: graph version 9 is not supported",
    "double-items": "item tower, 30 items: dtype float64, expected float32",
    "short-users": "user tower, batch 1 (5 rows, width 5): shape (1, 16), expected (5, 16)",
    "graphs-of-objects": "graphs() returned {'user': {'inputs': {",
    "graphs-of-tuples": "graphs() returned {'user': {'inputs': ('user_ids', 'history')}}, not",
}


@pytest.mark.parametrize("name", BROKEN)
def test_the_kit_fails_every_format_that_export_refuses(name):
    with pytest.raises(AssertionError) as failed:
        check_format(BROKEN[name][0])
    assert str(failed.value).startswith("format '") and KIT_SAYS[name] in str(failed.value)
    (Path(tempfile.gettempdir()) / "escaped.pt").unlink(missing_ok=True)  # WritesOutside's


class SwallowsTheSignal(TorchScriptFormat):
    """As torch does when SIGTERM lands half way through an import: the interrupt is lost,
    and what fails next is an ordinary error about a half-made module."""

    def export(self, model, out_dir: Path) -> list[Path]:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # the handler raises in here
        except KeyboardInterrupt:
            raise AttributeError("module 'torch._dynamo' has no 'exc'") from None
        return super().export(model, out_dir)


def test_a_signal_a_format_turns_into_its_own_error_still_stops_the_command(
    capsys, fitted_artifacts, tmp_path
):
    """The command says it was terminated (143), not that the format failed."""
    target = tmp_path / "bundle"
    with registering("register_formats", {"swallows": SwallowsTheSignal}, "swallowing"):
        argv = ["export", "--artifacts-dir", fitted_artifacts, "--out", target]
        code, _, err = run(capsys, *argv, "--format", "swallows")
    assert code == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == "terminated" and "error:" not in err
    assert not target.exists() and list(tmp_path.iterdir()) == []


class QuantizationsNone(TorchScriptFormat):
    quantizations = None


class QuantizationsString(TorchScriptFormat):
    quantizations = "int8"


@pytest.mark.parametrize("cls", [QuantizationsNone, QuantizationsString])
def test_a_format_with_malformed_quantizations_offers_none_and_the_rest_works(
    capsys, fitted_artifacts, tmp_path, cls
):
    with registering("register_formats", {"odd": cls}, "odd-quantizations"):
        warned = pytest.warns(UserWarning, match="quantizations must be a list of scheme names")
        with warned, pytest.raises(SystemExit) as done:
            main(["export", "--help"])
        out = capsys.readouterr().out.replace("\n", "").replace(" ", "")
        assert done.value.code == 0 and "--quantize{int8,int8-static}" in out
        with pytest.raises(AssertionError, match="quantizations must be a list of scheme names"):
            check_format(cls)


class ExportReturnsAPath(TorchScriptFormat):
    def export(self, model, out_dir: Path) -> list[Path]:
        return super().export(model, out_dir)[0]


def test_the_kit_names_an_export_that_does_not_return_a_list():
    with pytest.raises(AssertionError, match="not the list of files it wrote"):
        check_format(ExportReturnsAPath)
