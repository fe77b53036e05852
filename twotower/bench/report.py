"""Results as JSON (for machines) and Markdown tables (for docs), one table spec per suite.

Result files are checked before a suite runs (``check_writable``), so a
path that cannot be written fails in seconds, not after the benchmark.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..artifacts import ordinary_mode, twotower_folder_above
from ..errors import TwoTowerError

Column = tuple[str, Callable[[dict[str, Any]], str]]


PLOT_TAG = "twotower bench"  # the PNG "Software" text of the plots a suite draws


def check_writable(path: Path) -> None:
    """Refuse a result path that could not be written at the end of the run.

    That is a folder (it is never replaced), a file twotower did not write
    (a run replaces only its own results), a path inside a twotower folder
    (a file its manifest does not list would make it unloadable), or a path
    under a file or under a folder this process cannot write in. A file is created there and
    removed at once: that asks what permissions, read-only mounts and root
    would say, as a look at the mode bits cannot.
    """
    path = Path(os.path.realpath(path))  # a link's target is what would be written
    if path.is_dir():
        raise TwoTowerError(f"{path} is a folder; give the name of a file to write")
    holder = twotower_folder_above(path)
    if holder is not None:
        raise TwoTowerError(
            f"{path} is inside {holder}, a twotower folder whose manifest lists every file "
            "it holds (one more would make it unloadable); write the result elsewhere"
        )
    if path.exists() and not written_by_twotower(path):
        raise TwoTowerError(
            f"{path} exists and is not a twotower result; name a new file or remove it"
        )
    parent = next(folder for folder in path.parents if folder.exists())
    if not parent.is_dir():
        raise TwoTowerError(f"cannot write {path}: {parent} is a file, not a folder")
    try:
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as exc:
        raise TwoTowerError(f"cannot write {path} in {parent} ({exc.strerror or exc})") from None


def written_by_twotower(path: Path) -> bool:
    """Whether ``path`` holds what a suite writes: a JSON result or a Markdown report naming
    the ``twotower`` command that made it, or a plot tagged with ``PLOT_TAG``."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if data.startswith(b"\x89PNG"):
        return PLOT_TAG.encode() in data[:4096]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if text.startswith("# "):  # Markdown: the preamble's command block
        return re.search(r"\nCommand:\n\n```bash\ntwotower\b", text[:4096]) is not None
    try:
        result = json.loads(text)
    except json.JSONDecodeError:
        return False
    command = result.get("command") if isinstance(result, dict) else None
    ours = isinstance(command, str) and re.match(r"twotower\b", command) is not None
    return ours and "versions" in result


def write_text(path: Path, text: str) -> Path:
    """Write ``path`` whole or not at all: a temporary sibling, then a rename over it.

    Suites rewrite their files after every run, so a reader (or a stop)
    never meets half a file. A failure is one error naming the path.
    """
    path = Path(os.path.realpath(path))  # through a link, which stays
    try:
        replace_whole(path, text)
    except OSError as exc:
        raise TwoTowerError(f"cannot write {path} ({exc.strerror or exc})") from None
    return path


def replace_whole(path: Path, text: str) -> None:
    """``text`` into a temporary sibling, renamed over ``path``; nothing is left on failure.

    The file gets the mode ``open(path, "w")`` would give it: an existing
    file's own, else the ordinary one (mkstemp's is private).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() else ordinary_mode()
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(result: dict[str, Any], path: Path) -> Path:
    return write_text(path, json.dumps(result, indent=2) + "\n")


def table(columns: list[Column], rows: list[dict[str, Any]]) -> str:
    lines = [
        "| " + " | ".join(header for header, _ in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(row) for _, cell in columns) + " |" for row in rows]
    return "\n".join(lines)


def number(key: str, fmt: str) -> Callable[[dict[str, Any]], str]:
    return lambda row: format(row[key], fmt)


def optional(key: str, fmt: str) -> Callable[[dict[str, Any]], str]:
    return lambda row: "-" if row[key] is None else format(row[key], fmt)


def spread(key: str) -> Callable[[dict[str, Any]], str]:
    return lambda row: f"{row[key + '_mean']:.4f} ± {row[key + '_std']:.4f}"


SERVING: list[Column] = [
    ("runtime", lambda r: r["runtime"]),
    ("retriever", lambda r: r["retriever"]),
    ("user p50 ms b1", number("user_p50_ms_b1", ".3f")),
    ("user p99 ms b1", number("user_p99_ms_b1", ".3f")),
    ("user p50 ms b256", number("user_p50_ms_b256", ".2f")),
    ("retrieval p50 ms", number("retrieval_p50_ms", ".3f")),
    ("retrieval p99 ms", number("retrieval_p99_ms", ".3f")),
    ("queries/s", number("qps", ",.0f")),
    ("recall@10", number("recall@10", ".4f")),
    ("mrr@10", number("mrr@10", ".4f")),
    ("overlap@10", number("overlap@10", ".4f")),
]
SCALE: list[Column] = [
    ("items", number("items", ",")),
    ("method", lambda r: r["method"]),
    ("ef", lambda r: str(r["params"].get("ef", "-"))),
    ("build s", number("build_s", ".1f")),
    ("index MiB", number("index_mib", ".1f")),
    ("file MiB", number("file_mib", ".1f")),
    ("p50 ms", number("p50_ms", ".3f")),
    ("p99 ms", number("p99_ms", ".3f")),
    ("batched ms/query", number("batch_ms_per_query", ".4f")),
    ("queries/s", number("qps", ",.0f")),
    ("recall@10", number("recall@10", ".4f")),
]
TRAIN: list[Column] = [
    ("contender", lambda r: r["contender"]),
    ("seeds", number("seeds", "d")),
    ("test recall@10", spread("test_recall@10")),
    ("test ndcg@10", spread("test_ndcg@10")),
    ("valid recall@10", spread("valid_recall@10")),
    ("valid ndcg@10", spread("valid_ndcg@10")),
    ("best epoch", number("best_epoch_mean", ".0f")),
    ("fit s", number("seconds_mean", ".0f")),
    ("s to best epoch", number("seconds_to_best_epoch_mean", ".0f")),
    ("examples/s", number("examples_per_second_mean", ",.0f")),
]
WORKLOAD: list[Column] = [  # every scale-train row says which workload it measured
    ("workload", lambda r: r["workload"]),
    ("interactions", number("interactions", ",")),
    ("users", number("users", ",")),
    ("items", number("items", ",")),
]
SCALE_TRAIN: list[Column] = [
    *WORKLOAD,
    ("stage", lambda r: r["stage"]),
    ("seconds", number("seconds", ".1f")),
    ("peak MiB", number("peak_mib", ",.0f")),
    ("added MiB", number("added_mib", ",.0f")),
]
WORKLOADS: list[Column] = [
    *WORKLOAD,
    ("positives", number("positives", ",")),
    ("windows", number("windows", ",")),
    ("training pairs", number("training_pairs", ",")),
    ("generated in s", number("generate_s", ".1f")),
]
RANKS: list[Column] = [
    *WORKLOAD,
    ("ranks", number("ranks", "d")),
    ("steps", number("steps", "d")),
    ("examples", number("examples", ",")),
    ("seconds", number("seconds", ".1f")),
    ("examples/s", number("examples_per_second", ",.0f")),
]
GROWTH: list[Column] = [
    ("stage", lambda r: r["stage"]),
    ("from", lambda r: r["from"]),
    ("to", lambda r: r["to"]),
    ("interactions x", number("interactions_ratio", ".1f")),
    ("seconds x", number("seconds_ratio", ".1f")),
    ("exponent vs interactions", optional("exponent", ".2f")),
    ("vs items", optional("exponent_items", ".2f")),
    ("vs users x items", optional("exponent_users_x_items", ".2f")),
]
SERVE: list[Column] = [
    ("retriever", lambda r: r["retriever"]),
    ("workers", number("workers", "d")),
    ("concurrency", number("concurrency", "d")),
    ("requests/s", number("rps", ",.0f")),
    ("p50 ms", number("p50_ms", ".2f")),
    ("p95 ms", number("p95_ms", ".2f")),
    ("p99 ms", number("p99_ms", ".2f")),
    ("errors", number("errors", "d")),
    ("wrong answers", number("wrong", "d")),
    ("in-process recommend/s", number("in_process_rps", ",.0f")),
    ("HTTP / in-process", number("ratio", ".2f")),
]
TEXT_COLUMNS = ("runtime", "method", "contender", "workload", "stage", "from", "to", "retriever")


def by_position(result: dict[str, Any]) -> str:
    """Recall@10 by target position, mean over seeds: the over-fitting diagnostic."""
    positions = list(result["summary"][0]["recall@10_by_position"])
    columns: list[Column] = [("contender", lambda r: r["contender"])]
    for position in positions:
        label = {"-1": "-1 (test)", "-2": "-2 (valid)"}.get(position, position)
        columns.append((label, lambda r, p=position: f"{r['recall@10_by_position'][p]:.4f}"))
    return table(columns, result["summary"])


def popularity_line(result: dict[str, Any]) -> str:
    popularity = result["summary"][0]["popularity"]
    return (
        f"Popularity under the same protocol: test Recall@10 "
        f"{popularity['test']['recall@10']:.4f}, NDCG@10 {popularity['test']['ndcg@10']:.4f}; "
        f"valid Recall@10 {popularity['valid']['recall@10']:.4f}."
    )


# suite -> (columns, rows) of its main table
SUITES: dict[str, Callable[[dict[str, Any]], tuple[list[Column], list[dict[str, Any]]]]] = {
    "serving": lambda result: (SERVING, result["rows"]),
    "scale": lambda result: (SCALE, result["rows"]),
    "train": lambda result: (TRAIN, result["summary"]),
    "accuracy": lambda result: (TRAIN, result["summary"]),
    "scale-train": lambda result: (SCALE_TRAIN, result["rows"]),
    "serve": lambda result: (SERVE, result["rows"]),
}


def preamble(result: dict[str, Any], title: str) -> list[str]:
    machine, versions = result["machine"], result["versions"]
    lines = [f"# {title}", ""]
    if result.get("command"):
        lines += ["Command:", "", "```bash", result["command"], "```", ""]
    threads = ", ".join(f"{k} {v}" for k, v in result["threads"].items())
    lines.append(
        f"Machine: {machine['platform']}, {machine['cpu_count']} CPUs, "
        f"{machine['memory_gib']} GiB; threads: {threads}."
    )
    lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
    return [*lines, ""]


def markdown(result: dict[str, Any], suite: str) -> str:
    columns, rows = SUITES[suite](result)
    sections = [table(columns, rows)]
    if suite == "serving":
        title = "Serving benchmark"
        headline = result["headline"]
        intro = (
            f"{result['test_users']} test users, {result['num_items']} items, "
            f"{result['repeats']} timed calls per contender, interleaved in bursts of "
            f"{result['burst']} after warm-up.\n\n"
            f"- onnxruntime user tower p50 at batch 1 / PyTorch eager's: "
            f"{headline['onnx_over_torch_user_p50_b1']:.3f} (eager under `torch.inference_mode`; "
            f"{headline['onnx_over_torch_no_grad_user_p50_b1']:.3f} against eager under "
            f"`torch.no_grad`)\n"
            f"- `load_bundle(...).recommend` (ONNX + HNSW, seen items excluded, k=10): p50 "
            f"{headline['bundle_recommend_p50_ms']:.3f} ms, p99 "
            f"{headline['bundle_recommend_p99_ms']:.3f} ms"
        )
    elif suite == "serve":
        title = "HTTP serving benchmark"
        targets = result["targets"]
        met = [r for r in result["rows"] if r["concurrency"] == targets["concurrency"]]
        verdicts = "; ".join(
            f"{r['retriever']} x {r['workers']} worker(s): "
            + ("met" if r["meets_targets"] else "not met")
            + f" (p99 {r['p99_ms']:.1f} ms, ratio {r['ratio']:.2f}, {r['errors']} errors)"
            for r in met
        )
        intro = (
            f"`twotower serve` on loopback, {result['users']} users x {result['items']} items, "
            f"`GET /v1/users/{{id}}/recommendations?k={result['k']}` for each user in turn, "
            f"each concurrency {result['rows'][0]['requests']} timed requests after "
            f"{result['warmup']} untimed; the load generator is a second process on the same "
            "cores. In-process: `load_bundle(...).recommend` for the same users on one thread, "
            "before and after each server's runs (mean). Every answer is compared with it.\n\n"
            f"Targets at concurrency {targets['concurrency']}: no errors, p99 < "
            f"{targets['p99_ms']:g} ms, HTTP requests/s >= {targets['ratio']:g} x in-process: "
            f"{verdicts or 'not measured (no run at that concurrency)'}."
        )
    elif suite == "scale":
        title = "Scale benchmark"
        intro = f"Synthetic clustered {result['dim']}-d catalogs, {result['queries']} queries each."
    elif suite == "scale-train":
        title = "Scale-train benchmark"
        intro = (
            "A fit's stages on synthetic interactions shaped like MovieLens releases "
            "(`twotower/bench/workloads.py`), one process per workload: seconds, and peak "
            "resident memory of the process during the stage (added: above its size when the "
            f"stage began). Training: {result['warmup_steps']} untimed steps, then "
            f"{result['steps']} timed ones (`train` includes building the model and its windows)."
        )
        sections += [
            "Workloads:",
            table(WORKLOADS, result["workloads"]),
            "Training examples/s, one torch thread per rank (each rank trains a batch of the "
            "configured size, so N ranks train N times the examples per step):",
            table(RANKS, result["training"]),
            "Growth between consecutive workloads: the exponent of seconds against each size "
            "(1 = linear); the index is built over the items, evaluation scores users x items:",
            table(GROWTH, result["growth"]),
        ]
    else:
        title = "Training benchmark" if suite == "train" else "Accuracy benchmark"
        intro = (
            "Mean ± standard deviation over seeds; every run is a full `twotower fit` "
            "(early stopping on validation Recall@10, test read once on the kept model). "
            + popularity_line(result)
        )
        sections += [
            "Recall@10 by target position, mean over seeds (history = every earlier item, "
            "seen items masked; -1 is the test target, -2 the validation target, the others "
            "are training targets):",
            by_position(result),
        ]
    return "\n".join([*preamble(result, title), intro, "", "\n\n".join(sections), ""])


def write_markdown(result: dict[str, Any], suite: str, path: Path) -> Path:
    return write_text(path, markdown(result, suite))
