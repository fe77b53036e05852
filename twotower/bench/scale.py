"""Scale suite: how exact and HNSW search cost grows with the catalog.

Catalogs are synthetic, clustered, L2-normalised 64-d vectors (clustered so
that approximate search has structure to exploit and its recall means
something, as in ann-benchmarks); queries are drawn from the same clusters.
For each size: exact search (one BLAS matrix product, then top-K) and HNSW
over a grid of M / ef_construction / ef, measured on one thread.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..metrics import overlap_at_k
from ..retrievers.exact import ExactRetriever
from ..retrievers.hnsw import INDEX_FILE, HnswRetriever
from .report import PLOT_TAG
from .timing import environment, interleaved, p50_p99, pinned_threads

DIM = 64
K = 10
GRID = {"m": (8, 16, 32), "ef_construction": (100, 200), "ef": (10, 20, 40, 80, 160, 320)}
LARGE = 200_000  # above this many items only M=16, ef_construction=100 is built


def clustered(count: int, clusters: int, rng: np.random.Generator, centres=None):
    """Vectors around ``clusters`` random centres, normalised; returns (vectors, centres)."""
    if centres is None:
        centres = rng.standard_normal((clusters, DIM)).astype(np.float32)
    labels = rng.integers(len(centres), size=count)
    vectors = centres[labels] + 0.35 * rng.standard_normal((count, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), centres


LOAD_AND_MEASURE = """
import sys, hnswlib, psutil
process = psutil.Process()
before = process.memory_info().rss
index = hnswlib.Index(space="ip", dim=int(sys.argv[2]))
index.load_index(sys.argv[1])
print((process.memory_info().rss - before) / 2**20)
"""


def loaded_mib(index_file: Path, dim: int) -> float:
    """Memory an HNSW index takes once loaded, measured in a fresh process.

    Measuring inside this process is unreliable: the allocator reuses memory
    freed by earlier builds and searches, so the resident size barely moves.
    """
    import subprocess
    import sys

    command = [sys.executable, "-c", LOAD_AND_MEASURE, str(index_file), str(dim)]
    return float(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


def one_size(
    count: int,
    queries: int,
    repeats: int,
    grid: dict[str, Sequence[int]],
    build_threads: int,
    notify,
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(count)
    clusters = max(16, int(np.sqrt(count)))
    items, centres = clustered(count, clusters, rng)
    probes, _ = clustered(queries, clusters, rng, centres)
    rows: list[dict[str, Any]] = []

    exact = ExactRetriever.build(items)
    truth = exact.search(probes, K)[0]
    samples = interleaved({"single": _single(exact, probes)}, repeats)["single"]
    batched = interleaved({"batch": lambda: exact.search(probes, K)}, max(3, repeats // 20))
    p50, p99 = p50_p99(samples)
    rows.append(
        {
            "items": count,
            "method": "exact",
            "params": {},
            "build_s": 0.0,
            "index_mib": items.nbytes / 2**20,
            "file_mib": items.nbytes / 2**20,
            "p50_ms": p50,
            "p99_ms": p99,
            "batch_ms_per_query": float(np.median(batched["batch"])) / queries,
            "qps": 1000.0 / float(np.mean(samples)),
            "recall@10": 1.0,
        }
    )
    settings = (
        [(m, efc) for m in grid["m"] for efc in grid["ef_construction"]]
        if count <= LARGE
        else [(16, 100)]
    )
    for m, efc in settings:
        notify(f"{count:,} items: HNSW M={m} ef_construction={efc}")
        started = time.perf_counter()
        index = HnswRetriever.build(items, m=m, ef_construction=efc, build_threads=build_threads)
        build_s = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as tmp:
            index.save(Path(tmp))
            file_mib = (Path(tmp) / INDEX_FILE).stat().st_size / 2**20
            memory = loaded_mib(Path(tmp) / INDEX_FILE, DIM)
        for ef in grid["ef"]:
            index.options.ef = ef
            found = index.search(probes, K)[0]
            single = interleaved({"single": _single(index, probes)}, repeats, warmup=5)["single"]
            batched = interleaved({"batch": lambda x=index: x.search(probes, K)}, 3)["batch"]
            p50, p99 = p50_p99(single)
            rows.append(
                {
                    "items": count,
                    "method": f"hnsw M={m} efC={efc}",
                    "params": {"m": m, "ef_construction": efc, "ef": ef},
                    "build_s": build_s,
                    "index_mib": memory,
                    "file_mib": file_mib,
                    "p50_ms": p50,
                    "p99_ms": p99,
                    "batch_ms_per_query": float(np.median(batched)) / queries,
                    "qps": 1000.0 / float(np.mean(single)),
                    "recall@10": overlap_at_k(found, truth),
                }
            )
    return rows


def _single(index, probes: np.ndarray) -> Callable[[], object]:
    state = {"i": 0}

    def call():
        state["i"] = (state["i"] + 1) % len(probes)
        return index.search(probes[state["i"] : state["i"] + 1], K)

    return call


def run(
    sizes: Sequence[int] = (10_000, 100_000),
    queries: int = 1000,
    repeats: int = 300,
    threads: int = 1,
    grid: dict[str, Sequence[int]] | None = None,
    build_threads: int | None = None,
    notify: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Search latency is measured on ``threads``; index builds may use every core."""
    grid = grid or GRID
    build_threads = build_threads or os.cpu_count() or 1
    rows: list[dict[str, Any]] = []
    with pinned_threads(threads) as thread_counts:
        for count in sizes:
            notify(f"{count:,} items: exact")
            rows.extend(one_size(count, queries, repeats, grid, build_threads, notify))
    thread_counts["hnsw_build"] = build_threads
    return {**environment(thread_counts), "dim": DIM, "queries": queries, "rows": rows}


def plot(result: dict[str, Any], path: Path) -> Path:
    """Recall@10 against queries/s (log): one curve per HNSW build over ef, exact as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({row["items"] for row in result["rows"]})
    figure, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), squeeze=False)
    for axis, size in zip(axes[0], sizes, strict=True):
        rows = [row for row in result["rows"] if row["items"] == size]
        for method in dict.fromkeys(row["method"] for row in rows):
            curve = [r for r in rows if r["method"] == method]  # in ef order
            marker = "*" if method == "exact" else "o"
            axis.plot(
                [r["recall@10"] for r in curve],
                [r["qps"] for r in curve],
                marker=marker,
                label=method,
                markersize=10 if method == "exact" else 4,
            )
        axis.set_yscale("log")
        axis.set_xlabel("recall@10 vs exact")
        axis.set_ylabel("queries/s (1 thread, batch 1)")
        axis.set_title(f"{size:,} items, {result['dim']}-d")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, metadata={"Software": PLOT_TAG})  # what a rerun may replace
    plt.close(figure)
    return path
