"""A format plugin that breaks its contract is refused in one line naming it, and leaves no
bundle: a failing export, quantization or load, a wrong list of written files, a file over
one the bundle keeps for itself, or towers answering in another shape or type."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import registering

from twotower.errors import TwoTowerError
from twotower.export.bundle import export_bundle
from twotower.export.torchscript import TorchScriptFormat


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


BROKEN = {
    "export-raises": (ExportRaises, "could not export the towers (OSError: no space left"),
    "returns-nothing": (ReturnsNothing, "it returned [], not the list of files it wrote"),
    "writes-outside": (WritesOutside, "escaped.pt', not a file in the bundle"),
    "writes-config": (WritesConfig, "it wrote config.json, a file the bundle keeps for its own"),
    "load-raises": (LoadRaises, "could not load the towers it exported (ValueError: graph"),
    "double-items": (DoubleItems, "the item tower returned a float64 array of shape"),
    "short-users": (ShortUsers, "the user tower returned a float32 array of shape (1, "),
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
