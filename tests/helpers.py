"""Helpers shared by the test modules (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from twotower import TwoTowerConfig, plugins
from twotower.cli import main
from twotower.hookspecs import hookimpl
from twotower.towers.mean import MeanEncoder

TINY = {"synthetic_num_users": 60, "synthetic_num_items": 40}


@contextlib.contextmanager
def registering(hook: str, components: Mapping[str, Any], plugin: str) -> Iterator[None]:
    """A throw-away plugin ``plugin`` whose ``hook`` registers ``components`` (name ->
    component) while the block runs."""

    def register_all(register):
        for name, component in components.items():
            register(name, component)

    plugins.add_plugin(types.SimpleNamespace(**{hook: hookimpl(register_all)}), plugin)
    try:
        yield
    finally:
        plugins.remove_plugin(plugin)


def write_interactions(path: Path, users: int = 30, items: int = 24) -> Path:
    """Each user rates 8 of the items, one of them below the positive threshold. With 24
    items a test query ranks 17 unseen ones, so the default k_eval 10 is a real cut-off."""
    lines = ["user,item,rating,timestamp"]
    for user in range(1, users + 1):
        for step in range(8):
            item = (user * 5 + step * 7) % items + 1
            rating = 3 if step == 4 else 4 + (user + step) % 2
            lines.append(f"{user},{item},{rating},{1_000_000 + user * 100 + step}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tiny_config(tmp_path: Path, **changes: Any) -> TwoTowerConfig:
    """A seconds-long run: 60 synthetic users, 40 items, short histories, one thread."""
    values: dict[str, Any] = dict(
        dataset="synthetic",
        data_dir=str(tmp_path / "data"),
        max_history_len=8,
        epochs=2,
        num_threads=1,
        extra=dict(TINY),
    )
    values.update(changes)
    return TwoTowerConfig(**values)


def run(capsys, *argv: Any) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(code: int, err: str) -> str:
    """The one ``error:`` line of a failed command, which must be the last thing on stderr."""
    assert code == 1
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, err
    assert lines[-1] == errors[0]
    return errors[0]


def synthetic_fit(data_dir: Path, *extra: str) -> list[str]:
    """``twotower fit`` argv for a one-epoch run on the tiny synthetic data."""
    argv = ["fit", "--dataset", "synthetic", "--data-dir", str(data_dir), "--epochs", "1"]
    argv += ["--max-history-len", "8", "--no-progress", "--json", *extra]
    for key, value in TINY.items():
        argv += ["--set", f"{key}={value}"]
    return argv


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones too) with its bytes, and every folder."""
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<folder>"
        for p in root.rglob("*")
    }


def refused(capsys, root: Path, *argv: Any) -> str:
    """Run a command that must fail in one ``error:`` line and change nothing under ``root``."""
    before = snapshot(root)
    code, _, err = run(capsys, *argv)
    line = error_line(code, err)
    assert snapshot(root) == before
    return line


def run_script(script: str, request: dict[str, Any], cwd: Path) -> dict[str, Any]:
    """Run ``script`` in a fresh interpreter, JSON request on stdin, JSON answer on stdout."""
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


class Spare(MeanEncoder):
    """Owns a parameter its forward never uses: distributed training would stall on it."""

    def __init__(self, config, item_embedding, num_users):
        super().__init__(config, item_embedding, num_users)
        self.spare = nn.Parameter(torch.zeros(3))


def flip_a_byte(folder: Path) -> str:
    """Damage a bundle's user tower in place; return the error loading it must give."""
    path = folder / "user_tower.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return f"bundle file {path} is corrupted (sha256 does not match manifest)"
