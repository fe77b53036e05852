"""MovieLens-100K: find it, fetch it, verify it, parse it (PROTOCOL.md, "Data").

Sources are tried in order: a folder the user already has (GroupLens or
RecBole layout), GroupLens' ``ml-100k.zip``, then the copy RecBole ships in its
wheel (fetched with ``pip download --no-deps``; nothing is installed). Every
download is verified before use and lands atomically, so a failed or corrupt
download leaves no partial file; when every source fails the error lists each
one and why.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from filelock import FileLock, Timeout

from ..artifacts import ordinary_mode
from ..errors import TwoTowerError
from ..progress import note
from .dataset import Dataset, normalise_interactions

FOLDER = "ml-100k"
FETCH_WAIT = 900  # seconds a run waits while another fetches into the same folder
GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
GROUPLENS_MD5 = "0e33842e24a9c977be4e0107933c0723"  # as GroupLens publishes it
RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_MEMBERS = {
    "recbole/dataset_example/ml-100k/ml-100k.inter": (
        "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"
    ),
    "recbole/dataset_example/ml-100k/ml-100k.item": (
        "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532"
    ),
}
# sha256 of the canonical interaction table (see `canonical_sha256`): both
# layouts must give exactly these 100,000 rows, in this order.
INTERACTIONS_SHA256 = "f30dc7fc1d0a843b086c92eb2fab6a21a99a3d1acc149cfb73b3e6594a8d394b"

GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip


# --- parsing --------------------------------------------------------------


def find_local(data_dir: Path) -> Path | None:
    """The folder holding either layout, in ``data_dir`` or ``data_dir/ml-100k``."""
    for folder in (data_dir / FOLDER, data_dir):
        if (folder / "u.data").is_file() or (folder / "ml-100k.inter").is_file():
            return folder
    return None


def read_folder(folder: Path) -> Dataset:
    """Parse a GroupLens (``u.data``/``u.item``) or RecBole (``ml-100k.inter``/``.item``) folder."""
    if (folder / "u.data").is_file():
        return read_grouplens(folder)
    return read_recbole(folder)


def read_grouplens(folder: Path) -> Dataset:
    source = folder / "u.data"
    raw = _read_table(source, sep="\t", header=None, names=["user", "item", "rating", "timestamp"])
    interactions = normalise_interactions(raw, str(source), has_rating=True, row_offset=1)
    items = None
    item_file = folder / "u.item"
    if item_file.is_file():
        names = ["item", "title", "release", "video", "url", *GENRES]
        table = _read_table(item_file, sep="|", header=None, names=names, encoding="latin-1")
        flags = table[list(GENRES)]
        short = flags.isna().any(axis=1).to_numpy()
        if short.any():  # a cut line leaves its last genre columns empty
            raise TwoTowerError(
                f"{item_file}: line {short.argmax() + 1} has fewer than {len(names)} fields "
                "(a truncated file?)"
            )
        if not flags.isin(["0", "1"]).to_numpy().all():
            raise TwoTowerError(f"{item_file}: the 19 genre columns must hold 0 or 1")
        flags = (flags == "1").to_numpy()
        items = pd.DataFrame(
            {
                "item": table["item"].astype(str),
                "title": table["title"].astype(str),
                "genres": [[g for g, on in zip(GENRES, row, strict=True) if on] for row in flags],
            }
        )
        check_covers(items, interactions, item_file)
    return Dataset("movielens-100k", interactions, items)


def read_recbole(folder: Path) -> Dataset:
    source = folder / "ml-100k.inter"
    raw = _read_table(source, sep="\t", header=0)
    raw.columns = [c.split(":")[0] for c in raw.columns]  # "user_id:token" -> "user_id"
    require_columns(raw, ("user_id", "item_id", "rating", "timestamp"), source)
    raw = raw.rename(columns={"user_id": "user", "item_id": "item"})
    interactions = normalise_interactions(raw, str(source), has_rating=True)
    items = None
    item_file = folder / "ml-100k.item"
    if item_file.is_file():
        table = _read_table(item_file, sep="\t", header=0)
        table.columns = [c.split(":")[0] for c in table.columns]
        require_columns(table, ("item_id", "movie_title", "class"), item_file)
        genres = table["class"].fillna("").astype(str)
        items = pd.DataFrame(
            {
                "item": table["item_id"].astype(str),
                "title": table["movie_title"].fillna("").astype(str),
                "genres": [g.split() for g in genres],
            }
        )
        check_covers(items, interactions, item_file)
    return Dataset("movielens-100k", interactions, items)


def require_columns(table: pd.DataFrame, names: Sequence[str], path: Path) -> None:
    missing = [name for name in names if name not in table.columns]
    if missing:
        found = ", ".join(map(str, table.columns))
        raise TwoTowerError(f"{path}: no column {', '.join(missing)} (found {found})")


def check_covers(items: pd.DataFrame, interactions: pd.DataFrame, item_file: Path) -> None:
    """Every rated item has its row: the interactions are pinned, the item file is not, and a
    cut one would leave part of the catalog without titles or genres, in silence."""
    missing = pd.Index(interactions["item"].unique()).difference(pd.Index(items["item"]))
    if len(missing):
        raise TwoTowerError(
            f"{item_file}: no row for {len(missing)} of the rated items (e.g. item "
            f"{missing[0]}): a truncated or other file (remove the folder to fetch it again)"
        )


def _read_table(path: Path, **kwargs) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], **kwargs)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise TwoTowerError(f"{path}: cannot read ({exc})") from None


def canonical_sha256(interactions: pd.DataFrame) -> str:
    """sha256 of ``user\\titem\\trating\\ttimestamp`` lines, in table order."""
    lines = (
        interactions["user"]
        + "\t"
        + interactions["item"]
        + "\t"
        + interactions["rating"].map("{:g}".format)
        + "\t"
        + interactions["timestamp"].astype(str)
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# --- fetching -------------------------------------------------------------


@dataclass
class GroupLensZip:
    """The archive GroupLens publishes; verified by its published MD5."""

    url: str = GROUPLENS_URL
    md5: str = GROUPLENS_MD5
    name: str = "GroupLens ml-100k.zip"

    def fetch(self, target: Path) -> None:
        with urllib.request.urlopen(self.url, timeout=30) as response:
            payload = response.read()
        digest = hashlib.md5(payload).hexdigest()
        if digest != self.md5:
            raise TwoTowerError(f"checksum mismatch (md5 {digest}, expected {self.md5})")
        with zipfile.ZipFile(io.BytesIO(payload)) as archive, _staging(target) as staging:
            safe_extract(archive, staging)
            inner = staging / FOLDER if (staging / FOLDER / "u.data").is_file() else staging
            if not (inner / "u.data").is_file():
                raise TwoTowerError("archive has no ml-100k/u.data")
            for name in ("u.data", "u.item"):
                shutil.move(str(inner / name), staging / name)


@dataclass
class RecBoleWheel:
    """The ml-100k atomic files inside RecBole's wheel, fetched by pip, never installed."""

    requirement: str = RECBOLE_REQUIREMENT
    members: dict[str, str] = field(default_factory=lambda: dict(RECBOLE_MEMBERS))
    pip_args: Sequence[str] = ()
    name: str = f"RecBole wheel ({RECBOLE_REQUIREMENT}) via pip download"

    def fetch(self, target: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="twotower-pip-") as tmp:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
            command += ["--dest", tmp, *self.pip_args, self.requirement]
            run = subprocess.run(command, capture_output=True, text=True, timeout=600)
            if run.returncode != 0:
                last = (run.stderr.strip().splitlines() or ["no output"])[-1]
                raise TwoTowerError(f"pip download failed: {last}")
            wheels = list(Path(tmp).glob("*.whl"))
            if not wheels:
                raise TwoTowerError("pip download produced no wheel")
            with zipfile.ZipFile(wheels[0]) as wheel, _staging(target) as staging:
                for member, expected in self.members.items():
                    try:
                        payload = wheel.read(member)
                    except KeyError:
                        raise TwoTowerError(f"wheel has no {member}") from None
                    digest = hashlib.sha256(payload).hexdigest()
                    if digest != expected:
                        raise TwoTowerError(
                            f"checksum mismatch for {member} (sha256 {digest}, expected {expected})"
                        )
                    (staging / Path(member).name).write_bytes(payload)


Source = GroupLensZip | RecBoleWheel


class _staging:
    """A temporary folder beside ``target`` that becomes ``target`` only on success."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.target.parent))
        self.path.chmod(ordinary_mode(folder=True))  # mkdtemp's is private (0o700)
        return self.path

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            for name in ("__MACOSX", FOLDER):
                shutil.rmtree(self.path / name, ignore_errors=True)
            try:
                self.path.rename(self.target)
                return
            except OSError as failed:  # something took the target's place meanwhile
                shutil.rmtree(self.path, ignore_errors=True)
                raise TwoTowerError(
                    f"cannot put the download at {self.target} ({failed.strerror})"
                ) from None
        shutil.rmtree(self.path, ignore_errors=True)


def safe_extract(archive: zipfile.ZipFile, destination: Path) -> None:
    """Extract ``archive`` refusing any member whose path would land outside ``destination``."""
    root = destination.resolve()
    for member in archive.infolist():
        path = (root / member.filename).resolve()
        if not path.is_relative_to(root):
            raise TwoTowerError(f"archive member {member.filename!r} escapes the target folder")
    for member in archive.infolist():
        archive.extract(member, root)


def fetch(
    data_dir: Path,
    sources: Sequence[Source] | None = None,
    notify: Callable[[str], None] = lambda message: None,
) -> Path:
    """Download ML-100K into ``data_dir/ml-100k`` from the first source that works."""
    sources = [GroupLensZip(), RecBoleWheel()] if sources is None else sources
    target = data_dir / FOLDER
    in_the_way = in_the_way_of(target)
    if in_the_way:
        raise TwoTowerError(
            f"{target} {in_the_way}: the download cannot go there; "
            "move it away or point --data-dir elsewhere"
        )
    failures = []
    for source in sources:
        notify(f"fetching it from {source.name}")
        try:
            source.fetch(target)
        except Exception as exc:  # every reason is reported below, none is fatal alone
            failures.append(f"{source.name}: {exc}")
            notify(f"{source.name} failed: {exc}")
            continue
        notify(f"MovieLens-100K is in {target}")
        return target
    raise TwoTowerError("could not fetch MovieLens-100K; " + "; ".join(failures))


def in_the_way_of(target: Path) -> str | None:
    """What keeps a download from becoming ``target``, or None (absent, or an empty folder)."""
    if target.is_symlink() and not target.exists():
        return "is a link to nothing"
    if target.is_dir():
        return "holds neither u.data nor ml-100k.inter" if any(target.iterdir()) else None
    return "is a file" if target.exists() else None


def fetched(
    data_dir: Path,
    sources: Sequence[Source] | None = None,
    notify: Callable[[str], None] = lambda message: None,
) -> Path:
    """The ML-100K folder in ``data_dir``, fetched unless there.

    One fetch at a time: the ranks of a torchrun group, or two runs, that
    share ``data_dir`` wait for the first (a lock file beside the folder),
    then find its folder.
    """
    lock = data_dir / f".{FOLDER}.lock"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        lock.touch()
    except OSError as exc:
        raise TwoTowerError(f"cannot fetch into {data_dir} ({exc.strerror or exc})") from None
    try:
        with FileLock(lock, timeout=FETCH_WAIT):
            folder = find_local(data_dir)
            if folder is None:
                notify(f"MovieLens-100K not in {data_dir}")
                folder = fetch(data_dir, sources, notify)
    except Timeout:
        raise TwoTowerError(
            f"another run has been fetching into {data_dir} for {FETCH_WAIT} s (lock {lock}); "
            "wait for it, or remove the lock if no run is left"
        ) from None
    return folder


def load(
    data_dir: Path,
    download: bool = True,
    sources: Sequence[Source] | None = None,
    notify: Callable[[str], None] = lambda message: None,
) -> Dataset:
    """Load ML-100K from ``data_dir``, fetching it first when absent and allowed."""
    folder = find_local(data_dir)
    if folder is None:
        if not download:
            raise TwoTowerError(
                f"MovieLens-100K not found in {data_dir} (u.data or ml-100k.inter), and "
                "downloading is off; point --data-dir at it"
            )
        folder = fetched(data_dir, sources, notify)
    dataset = read_folder(folder)
    digest = canonical_sha256(dataset.interactions)
    if digest != INTERACTIONS_SHA256:
        raise TwoTowerError(
            f"{folder}: not the MovieLens-100K interactions this project pins "
            f"(content sha256 {digest})"
        )
    return dataset


def load_for_config(config) -> Dataset:
    """The ``movielens-100k`` dataset plugin; a fetch is told on stderr."""
    return load(Path(config.data_dir), download=config.download, notify=note)
