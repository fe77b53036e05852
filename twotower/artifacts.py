"""Artifacts and bundle folders: file names, the manifest, atomic writes, verified reads.

A run's files are written into a staging folder beside the target and swap
in only when every file and the manifest are complete, so an interrupted or
failed run never leaves a half-written folder. One run at a time writes a
target: a lock beside it refuses a second. A folder is only ever replaced
by a folder of its own kind, written by twotower, that holds nothing but the
files its manifest lists, and never by the command that reads it. A
target that is a link is written through: the folder it names is
replaced, the link stays.

``manifest.json`` says what the folder is (``kind``) and lists each file
with its sha256; reading checks its fields, refuses files it does not list,
and verifies every checksum, naming the bad file. Nothing is pickled:
tensors go through ``torch.save`` of plain state dicts (read back with
``weights_only=True``), arrays through ``np.save`` without pickle,
everything else is JSON.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from .errors import TwoTowerError, refused_as
from .schema import check

FORMAT_VERSION = 2  # 2: the manifest says what the folder is and which data it was fitted on
BUNDLE_FORMAT_VERSION = 1  # bundles written by `twotower export` (export/bundle.py)
MANIFEST = "manifest.json"
MODEL = "model.pt"
CONFIG = "config.json"
ITEM_EMBEDDINGS = "item_embeddings.npy"
MAPPINGS = "mappings.json"
ITEMS = "items.json"
USER_HISTORIES = "user_histories.json"
TRAIN_LOG = "train_log.jsonl"
TEST_METRICS = "test_metrics.json"
BASELINE_METRICS = "popularity_metrics.json"

# the files every loader of that kind reads, so the manifest must checksum them
ARTIFACT_FILES = (MODEL, CONFIG, ITEM_EMBEDDINGS, MAPPINGS, ITEMS, USER_HISTORIES)
BUNDLE_FILES = (CONFIG, ITEM_EMBEDDINGS, MAPPINGS, ITEMS, USER_HISTORIES)
# every file fit writes into an artifacts folder (an index adds its own beside them)
FITTED_FILES = (*ARTIFACT_FILES, TRAIN_LOG, TEST_METRICS, BASELINE_METRICS, MANIFEST)


@dataclass
class Manifest:
    """The fields every manifest has; ``files`` maps each file name to its sha256."""

    format_version: int
    kind: str
    created: str
    versions: dict[str, Any]
    files: dict[str, Any]


@dataclass
class ArtifactsManifest(Manifest):
    config: dict[str, Any]
    data_sha256: str  # Split.fingerprint of the data the model was fitted on


@dataclass
class BundleManifest(Manifest):
    source_model_sha256: str
    format: str
    quantization: str | None
    graphs: dict[str, Any]
    max_history_len: int
    num_users: int
    num_items: int
    embedding_dim: int
    parity: dict[str, Any]
    opset: int | None = None


@dataclass(frozen=True)
class Kind:
    """What a folder of one kind is: its manifest tag, version, schema and required files."""

    name: str  # as messages say it
    noun: str  # "an artifacts folder"
    tag: str  # the manifest's "kind"
    version: int
    schema: type
    required: tuple[str, ...]
    made_by: str  # the command that writes it


KINDS = {
    "artifacts": Kind(
        "artifacts",
        "an artifacts folder",
        "twotower-artifacts",
        FORMAT_VERSION,
        ArtifactsManifest,
        ARTIFACT_FILES,
        "fit",
    ),
    "bundle": Kind(
        "bundle",
        "a bundle",
        "twotower-bundle",
        BUNDLE_FORMAT_VERSION,
        BundleManifest,
        BUNDLE_FILES,
        "export",
    ),
}
TAGS = {kind.tag: kind for kind in KINDS.values()}
SHA256 = re.compile(r"[0-9a-f]{64}")

LIBRARIES = ("twotower", "torch", "numpy", "pandas", "hnswlib", "pluggy", "onnx", "onnxruntime")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        with contextlib.suppress(PackageNotFoundError):
            versions[name] = version(name)
    return versions


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def save_array(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # np.save on a path would append ".npy"
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


def ordinary_mode(folder: bool = False) -> int:
    """The mode ``open(path, "w")`` or ``mkdir`` would give: 0o666 or 0o777 less the umask.

    ``mkstemp`` and ``mkdtemp`` make their files private (0o600, 0o700),
    right while they are temporary, wrong once one becomes the user's file.
    The umask can only be read by setting it, so it is set back at once.
    """
    umask = os.umask(0o022)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


# --- writing ------------------------------------------------------------------------


def read_manifest_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TwoTowerError(f"{path} is corrupted ({exc})") from None


def folder_path(path: Any) -> Path:
    """A folder argument of the API as a ``Path`` (``str`` or path-like only)."""
    if not isinstance(path, str | os.PathLike):
        raise TwoTowerError(f"expected the path of a folder, not {type(path).__name__} {path!r}")
    return Path(path)


def twotower_folder_above(target: Path) -> Path | None:
    """The nearest folder around ``target`` that is a twotower folder (its manifest names
    a kind), or None: a folder written into one would break its checksummed listing."""
    for folder in Path(os.path.abspath(target)).parents:
        path = folder / MANIFEST
        if path.is_file():
            try:
                manifest = read_manifest_json(path)
            except (TwoTowerError, OSError):
                continue
            if isinstance(manifest, dict) and folder_kind(manifest) is not None:
                return folder
    return None


def folder_kind(manifest: dict[str, Any]) -> Kind | None:
    """The kind a manifest declares, or None for another program's ``manifest.json``.

    Manifests of format 1 artifacts had no ``kind``; they, like every twotower
    manifest, are told by an integer ``format_version`` and ``files`` checksums.
    """
    if "kind" not in manifest:
        ours = isinstance(manifest.get("format_version"), int) and isinstance(
            manifest.get("files"), dict
        )
        return KINDS["artifacts"] if ours else None
    tag = manifest["kind"]
    return TAGS.get(tag) if isinstance(tag, str) else None


def unlisted(folder: Path, manifest: dict[str, Any]) -> list[str]:
    """Names in ``folder`` that its manifest does not list (files or folders)."""
    listed = manifest.get("files")
    listed = set(listed) if isinstance(listed, dict) else set()
    return sorted(p.name for p in folder.iterdir() if p.name not in listed | {MANIFEST})


def resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a loop of links (Python < 3.13)
        raise TwoTowerError(f"cannot follow the links of {path} ({exc})") from None


def holds(a: Path, b: Path) -> bool:
    """``a`` is ``b``, or a folder around it."""
    a, b = resolved(a), resolved(b)
    return a == b or a in b.parents


def overlaps(a: Path, b: Path) -> bool:
    """One path is the other, or inside it."""
    return holds(a, b) or holds(b, a)


def check_target(
    target: Path, kind: Kind, reads: Sequence[Path], keeps: Sequence[Path] = ()
) -> None:
    """Refuse a target the command may not replace, before anything is created.

    ``reads`` are the files and folders the command reads; writing over,
    into or around them would destroy its own input. ``keeps`` are folders
    the target may be inside but must not be nor hold (the data folder, which
    holds the artifacts by default and may be filled during the run).
    """
    for source in reads:
        if overlaps(target, Path(source)):
            raise TwoTowerError(
                f"{target} would overwrite {source}, which this command reads; "
                "choose another folder"
            )
    for kept in keeps:
        if holds(target, Path(kept)):
            raise TwoTowerError(
                f"{target} would replace {kept}, the data folder of this run, with what it "
                "writes; choose a folder that does not hold it"
            )
    holder = twotower_folder_above(target)
    if holder is not None:
        raise TwoTowerError(
            f"{target} is inside {holder}, a twotower folder whose manifest lists every file "
            "it holds; choose a folder outside it"
        )
    if not target.exists():
        return
    if not target.is_dir():
        raise TwoTowerError(f"{target} is a file, not a folder; choose another folder")
    if not any(target.iterdir()):
        return
    path = target / MANIFEST
    if not path.is_file():
        raise TwoTowerError(
            f"{target} exists and is not a twotower {kind.name} folder; choose another folder"
        )
    try:
        manifest = read_manifest_json(path)
    except TwoTowerError:
        manifest = None
    if not isinstance(manifest, dict):
        raise TwoTowerError(
            f"{target} has a damaged {MANIFEST}, so it is not replaced; choose another folder"
        )
    found = folder_kind(manifest)
    if found is not kind:
        what = f"{found.noun}" if found else "a folder of an unknown kind"
        raise TwoTowerError(
            f"{target} is {what}, and `twotower {kind.made_by}` writes {kind.noun}; "
            "choose another folder"
        )
    extra = unlisted(target, manifest)
    if extra:
        raise TwoTowerError(
            f"{target} holds files twotower did not write ({', '.join(extra[:3])}), "
            "so it is not replaced; choose another folder"
        )


@contextlib.contextmanager
def exclusive(target: Path) -> Iterator[None]:
    """Hold the lock of ``target``; a second run writing it fails at once.

    The lock file beside the target is removed while still held:
    ``filelock`` checks, once it has locked, that the file it locked is
    still there, so a run that opened the old file retries instead.
    """
    path = target.with_name(f".{target.name}.lock")
    try:
        path.touch()  # filelock reports a folder it cannot write in as a lock held elsewhere
    except OSError as exc:
        raise TwoTowerError(f"cannot write {target} ({exc.strerror})") from None
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise TwoTowerError(
            f"another twotower run is writing {target} (lock {path}); wait for it to finish"
        ) from None
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        lock.release()


def remove_entry(path: Path) -> None:
    """Remove a staging folder, or whatever else stands at its name.

    A link is unlinked: ``rmtree`` refuses links (silently, with
    ``ignore_errors``), and must never follow one into the folder it names.
    """
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def remove_stale(target: Path) -> None:
    """Staging folders of ``target`` left by a killed run (only called under its lock).

    The name is escaped: ``run[1]`` would otherwise match ``run1``'s staging folders.
    """
    name = glob.escape(target.name)
    for pattern in (f".{name}.staging-*", f".{name}.previous-*"):
        for stale in target.parent.glob(pattern):
            remove_entry(stale)


def real_target(target: Path) -> Path:
    """The folder a target that is a link names: it is written, and the link stays.

    The swap renames over the target's name; over a link it would put a
    folder in the link's place and leave the folder it names holding the
    old files. Resolved first, the lock is also the same whichever name
    a run is given.
    """
    return resolved(target) if target.is_symlink() else target


@contextlib.contextmanager
def staged_folder(
    target: Path, kind: str = "artifacts", reads: Sequence[Path] = (), keeps: Sequence[Path] = ()
) -> Iterator[Path]:
    """Yield an empty staging folder that replaces ``target`` only if the block succeeds.

    On entry the target is checked (``check_target``) and locked, so a run
    fails before its work, not after; it is checked again before the swap,
    since the run itself may have put something there (a download). A
    failed block leaves nothing behind, not even the parent folders it had
    to create. A target that is a link is written through (``real_target``).
    """
    target = real_target(Path(target))
    here = Path.cwd()
    if Path(os.path.abspath(target)) in (here, *here.parents):  # ".", "", "..", "/"
        raise TwoTowerError(
            f"{target} is the current folder or holds it; name a folder of its own "
            "(for example ./out)"
        )
    check_target(target, KINDS[kind], reads, keeps)
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    done = False
    try:
        try:  # a failure part way (a full disk) leaves the parents made so far: removed below
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TwoTowerError(f"cannot create {target.parent} ({why_not(target, exc)})") from None
        with exclusive(target):
            check_target(target, KINDS[kind], reads, keeps)  # it may have changed before the lock
            remove_stale(target)
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
            staging.chmod(ordinary_mode(folder=True))  # mkdtemp's is private (0o700)
            try:
                yield staging
                check_target(target, KINDS[kind], reads, keeps)  # nothing new to be lost in it
                previous = target.with_name(f".{target.name}.previous-{os.getpid()}")
                if target.exists():
                    target.rename(previous)
                staging.rename(target)
                remove_entry(previous)
                done = True
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    finally:
        if not done:
            for parent in created:  # deepest first; one that is no longer empty stays
                try:
                    parent.rmdir()
                except OSError:
                    if os.path.isdir(parent):
                        break  # (one never made, the creation failing first, is skipped)


def why_not(target: Path, error: OSError) -> str:
    """Why the folders around ``target`` cannot be made: the path that stands in the way
    (a file, a loop of links), else the system's reason."""
    for path in reversed(target.parents):  # os.path's tests: False, not an error, past a limit
        if os.path.islink(path) and not os.path.exists(path):
            return f"{path} is a link to nothing or a loop of links"
        if os.path.exists(path) and not os.path.isdir(path):
            return f"{path} is a file"
    return str(error.strerror)


def write_manifest(folder: Path, kind: str, extra: dict[str, Any]) -> dict[str, Any]:
    """Checksum every file in ``folder`` into ``manifest.json`` (written last)."""
    files = {
        path.name: sha256_of(path)
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != MANIFEST
    }
    manifest = {
        "format_version": KINDS[kind].version,
        "kind": KINDS[kind].tag,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": library_versions(),
        **extra,
        "files": files,
    }
    check(KINDS[kind].schema, manifest, complete=True)  # what every reader will demand
    write_json(folder / MANIFEST, manifest)
    return manifest


# --- reading ------------------------------------------------------------------------


def identity(folder: Path) -> tuple[int, int] | None:
    """What tells two folders at one path apart: fit and export rename a new one in.
    None where there is none (the reading that follows says why)."""
    try:
        status = os.stat(folder)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def check_unchanged(
    folder: Path, known: tuple[int, int] | None, when: str = "while it was read"
) -> None:
    """Refuse a folder replaced since ``known`` was taken: files read before and after
    the swap would come from two fits or exports, each passing its own checksum."""
    if identity(folder) != known:
        raise TwoTowerError(f"{folder} was replaced (by a fit or an export) {when}; load it again")


def read_manifest(folder: Path, kind: str = "artifacts") -> dict[str, Any]:
    """Read and check ``manifest.json``: kind, format version, fields and every file's sha256."""
    folder, spec = Path(folder), KINDS[kind]
    path = folder / MANIFEST
    try:
        is_folder = folder.is_dir()
    except OSError as exc:  # a name too long for the file system, say
        raise TwoTowerError(f"cannot read {folder} ({exc.strerror})") from None
    if not is_folder:
        raise TwoTowerError(f"no {kind} folder at {folder}; run `twotower {spec.made_by}` first")
    if not path.is_file():
        raise TwoTowerError(f"{path} is missing: {folder} is not a complete {kind} folder")
    manifest = read_manifest_json(path)
    if not isinstance(manifest, dict):
        raise TwoTowerError(f"{path} is corrupted (not a JSON object)")
    found = folder_kind(manifest)
    if found is not spec:
        what = found.noun if found else "a folder of an unknown kind"
        raise TwoTowerError(f"{folder} is {what}, not {spec.noun} (its {MANIFEST} says so)")
    version = manifest.get("format_version")
    if version != spec.version:
        raise TwoTowerError(
            f"{path}: {kind} format version {version!r}, but this twotower reads version "
            f"{spec.version}; re-create them with this version"
        )
    check(spec.schema, manifest, where=f"{path}: ", spell=repr, noun="field", complete=True)
    check_files(folder, manifest["files"], spec)
    return manifest


def check_files(folder: Path, files: dict[str, Any], spec: Kind) -> None:
    """Every file the folder holds is listed with a sha256, the required ones too, and matches."""
    path = folder / MANIFEST
    for name, digest in files.items():
        if name in (MANIFEST, ".", "..") or Path(name).name != name:
            raise TwoTowerError(f"{path}: {name!r} is not a file name of this folder")
        if not isinstance(digest, str) or not SHA256.fullmatch(digest):
            raise TwoTowerError(f"{path}: the sha256 of {name!r} is not a sha256 ({digest!r})")
    for name in spec.required:
        if name not in files:
            raise TwoTowerError(f"{path} lists no checksum for {name}; the folder is refused")
    extra = unlisted(folder, {"files": files})
    if extra:
        raise TwoTowerError(
            f"{spec.name} file {folder / extra[0]} is not listed in {MANIFEST} (no checksum)"
        )
    for name, expected in files.items():
        file = folder / name
        if not file.is_file():
            raise TwoTowerError(f"{spec.name} file {file} is missing")
        if sha256_of(file) != expected:
            raise TwoTowerError(
                f"{spec.name} file {file} is corrupted (sha256 does not match manifest)"
            )


# Checksums vouch for a folder's bytes, not for their meaning: a file rewritten by hand (its
# sha256 updated) is read through these, which refuse what twotower would not have written.


def read_json(folder: Path, name: str, holds: Callable[[Any], bool], expected: str) -> Any:
    """File ``name`` of ``folder``, which must hold ``expected`` (``holds`` says whether)."""
    path = Path(folder) / name
    with refused_as(f"{path} cannot be read"):
        value = json.loads(path.read_text(encoding="utf-8"))
    return held(path, value, holds(value), expected)


def load_array(folder: Path, name: str, holds: Callable[[np.ndarray], bool], expected: str):
    """Array file ``name`` of ``folder`` (never unpickled), which must hold ``expected``."""
    path = Path(folder) / name
    with refused_as(f"{path} cannot be read"):
        value = np.load(path, allow_pickle=False)
    return held(path, value, isinstance(value, np.ndarray) and holds(value), expected)


def held(path: Path, value: Any, holds: bool, expected: str) -> Any:
    if not holds:
        raise TwoTowerError(f"{path} does not hold {expected}, as twotower writes it")
    return value


def str_list(value: Any) -> bool:
    """Whether ``value`` is a JSON list of strings (ids, genres)."""
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
