"""Serving suite: every tower runtime crossed with every retriever, on the test users.

Rows are ``runtime x retriever``. Runtimes are PyTorch eager (``torch``),
each registered export format, and each quantization a format offers
(``onnx-int8``); retrievers are every registered retriever. Each runtime is
the recommendation core over its towers, so accuracy (Recall@10, MRR@10) is
computed through the very pipeline that is timed, and ``overlap@10``
compares its top-10 with the exact PyTorch pipeline's. The headline adds
onnxruntime's user-tower latency as a fraction of eager PyTorch's, and the
end-to-end latency of ``recommend`` through the ONNX bundle (ONNX user tower
+ HNSW, seen items excluded).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import plugins
from ..data.padding import pad_left
from ..metrics import found_ranks, metrics_from_ranks, overlap_at_k
from ..serving import load_bundle
from ..towers.runtime import ModelTowers
from .timing import environment, interleaved, p50_p99, pinned_threads

K = 10
BATCH = 256
BURST = 10  # timed calls per visit of a contender (after one untimed call)


def runtimes(artifacts_dir: Path, exports_dir: Path, threads: int, notify) -> dict[str, Any]:
    """``name -> recommendation core`` for eager PyTorch (``torch``), every format, and every
    quantization a format offers (``<format>-<scheme>``). A bundle is exported only when
    ``exports_dir`` has none from these very weights and library versions."""
    from ..api import load
    from ..export.bundle import export_bundle, exported_from, offered_quantizations

    found: dict[str, Any] = {"torch": load(artifacts_dir, threads=threads)}
    offered = offered_quantizations()
    variants = [(format, format, None) for format in offered]
    variants += [
        (f"{f}-{scheme}", f, scheme) for f, schemes in offered.items() for scheme in schemes
    ]
    for runtime, format, quantize in variants:
        notify(f"bundle for {runtime}")
        folder = exports_dir / f"bench-{runtime}"
        if not exported_from(folder, artifacts_dir, format, quantize):
            export_bundle(artifacts_dir, folder, format=format, quantize=quantize)
        found[runtime] = load_bundle(folder, threads=threads)
    return found


def rotating(items: list) -> Callable[[], Any]:
    """A function returning the next item of ``items`` on each call, round and round."""
    cycle = itertools.cycle(items)
    return lambda: next(cycle)


def encode_call(towers, inputs: list[tuple]) -> Callable[[], object]:
    """One user-tower call per invocation, on the next of ``inputs``."""
    next_input = rotating(inputs)
    return lambda: towers.encode_users(*next_input())


def search_call(index, searches: list[tuple]) -> Callable[[], object]:
    """One top-10 search per invocation, on the next (vector, excluded items) pair."""
    next_search = rotating(searches)

    def call():
        vector, exclude = next_search()
        return index.search(vector, K, exclude=exclude)

    return call


def recommend_call(recommender, user_ids: list[str], retriever: str) -> Callable[[], object]:
    """One end-to-end ``recommend`` per invocation, for the next user."""
    next_user = rotating(user_ids)
    return lambda: recommender.recommend(next_user(), k=K, exclude_seen=True, retriever=retriever)


def accuracy(top: np.ndarray, targets: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    metrics = metrics_from_ranks(found_ranks(top, targets), (K,))
    return {
        "recall@10": metrics["recall@10"],
        "mrr@10": metrics["mrr@10"],
        "overlap@10": overlap_at_k(top, reference),
    }


def run(
    artifacts_dir: Path,
    exports_dir: Path = Path("exports"),
    repeats: int = 200,
    threads: int = 1,
    notify: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    with pinned_threads(threads) as thread_counts:
        found = runtimes(Path(artifacts_dir), Path(exports_dir), threads, notify)
        trained = found["torch"]
        max_len = trained.max_history_len
        users, histories, targets = trained.test_queries()
        retrievers = plugins.retrievers().names()

        notify("accuracy through each pipeline")
        reference = trained.search(users, histories, K, retriever="exact")[0]
        quality = {
            (runtime, retriever): accuracy(
                core.search(users, histories, K, retriever=retriever)[0], targets, reference
            )
            for retriever in retrievers
            for runtime, core in found.items()
        }

        notify(f"latency, {repeats} interleaved repetitions on {threads} thread(s)")
        rng = np.random.default_rng(0)
        picked = rng.permutation(len(users))[: min(len(users), repeats)]
        single = [(users[i : i + 1], *pad_left([histories[i]], max_len)) for i in picked]
        rows_256 = rng.choice(len(users), size=BATCH, replace=len(users) < BATCH)
        batch = (users[rows_256], *pad_left([histories[i] for i in rows_256], max_len))
        calls: dict[Any, Callable[[], object]] = {}
        for name, core in found.items():
            calls[name, "b1"] = encode_call(core.towers, single)
            calls[name, "b256"] = encode_call(core.towers, [batch])
            vectors = core.encode(users[picked], [histories[i] for i in picked])
            searches = [(vectors[j : j + 1], [histories[i] - 1]) for j, i in enumerate(picked)]
            for retriever in retrievers:
                calls[name, retriever] = search_call(core.retriever(retriever), searches)
        # a reference for the headline: eager under torch.no_grad instead of inference_mode
        no_grad = ModelTowers(trained.towers.model, threads, inference_mode=False)
        calls["torch-no-grad", "b1"] = encode_call(no_grad, single)
        user_ids = [trained.user_ids[users[i] - 1] for i in picked]
        calls["bundle", "recommend"] = recommend_call(found["onnx"], user_ids, "hnsw")
        samples = interleaved(calls, repeats, burst=BURST)

    rows = []
    for (runtime, retriever), scores in quality.items():
        user_b1 = p50_p99(samples[runtime, "b1"])
        user_b256 = p50_p99(samples[runtime, "b256"])
        search = p50_p99(samples[runtime, retriever])
        end_to_end = np.mean(samples[runtime, "b1"]) + np.mean(samples[runtime, retriever])
        rows.append(
            {
                "runtime": runtime,
                "retriever": retriever,
                "user_p50_ms_b1": user_b1[0],
                "user_p99_ms_b1": user_b1[1],
                "user_p50_ms_b256": user_b256[0],
                "user_p99_ms_b256": user_b256[1],
                "retrieval_p50_ms": search[0],
                "retrieval_p99_ms": search[1],
                "qps": 1000.0 / end_to_end,
                **scores,
            }
        )
    recommend = p50_p99(samples["bundle", "recommend"])
    eager, onnx = np.median(samples["torch", "b1"]), np.median(samples["onnx", "b1"])
    no_grad = np.median(samples["torch-no-grad", "b1"])
    headline = {
        "onnx_over_torch_user_p50_b1": float(onnx / eager),
        "onnx_over_torch_no_grad_user_p50_b1": float(onnx / no_grad),
        "bundle_recommend_p50_ms": recommend[0],
        "bundle_recommend_p99_ms": recommend[1],
    }
    return {
        **environment(thread_counts),
        "headline": headline,
        "repeats": repeats,
        "burst": BURST,
        "test_users": len(users),
        "num_items": len(trained.item_ids),
        "rows": rows,
    }
