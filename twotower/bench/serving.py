"""Serving suite: every tower runtime crossed with every retriever, on the test users.

Rows are ``runtime x retriever``. Runtimes are PyTorch eager (``torch``),
each registered export format, and ``onnx-int8``; retrievers are every
registered retriever. The headline adds onnxruntime's user-tower latency as a
fraction of eager PyTorch's, and the end-to-end ``Bundle.recommend`` latency
(ONNX user tower + HNSW, seen items excluded). Accuracy (Recall@10, MRR@10)
is computed through the very pipeline that is timed, and ``overlap@10``
compares its top-10 with the exact PyTorch pipeline's.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import artifacts as files
from .. import plugins
from ..data.padding import pad_left
from ..errors import TwoTowerError
from ..serving import load_bundle
from .timing import environment, interleaved, p50_p99, pinned_threads

K = 10
BATCH = 256
BURST = 10  # timed calls per visit of a contender (after one untimed call)


def ensure_bundle(artifacts_dir: Path, folder: Path, format: str, quantize: str | None) -> Path:
    """Reuse ``folder`` when it was exported from these very weights by these very
    library versions, else export it."""
    from ..export.bundle import export_bundle

    wanted = {
        "source_model_sha256": files.sha256_of(Path(artifacts_dir) / files.MODEL),
        "format": format,
        "versions": files.library_versions(),
    }
    try:
        manifest = files.read_manifest(folder, "bundle")
        if all(manifest.get(key) == value for key, value in wanted.items()):
            return folder
    except TwoTowerError:
        pass
    export_bundle(artifacts_dir, folder, format=format, quantize=quantize)
    return folder


def runtimes(recommender, exports_dir: Path, threads: int, notify) -> dict[str, Any]:
    """``name -> towers`` for eager PyTorch, every format plugin, and int8 ONNX."""
    from ..export.torchscript import TorchTowers
    from ..export.towers import towers

    user_tower, item_tower = towers(recommender.model)
    found: dict[str, Any] = {"torch": TorchTowers(user_tower, item_tower)}
    variants = [(name, name, None) for name in plugins.formats().names()]
    variants.append(("onnx-int8", "onnx", "int8"))
    for runtime, format, quantize in variants:
        notify(f"bundle for {runtime}")
        folder = ensure_bundle(
            recommender.folder, exports_dir / f"bench-{runtime}", format, quantize
        )
        found[runtime] = plugins.formats().get(format)().load(folder, threads)
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


def recommend_call(bundle, user_ids: list[str]) -> Callable[[], object]:
    """One end-to-end ``Bundle.recommend`` per invocation, for the next user."""
    next_user = rotating(user_ids)
    return lambda: bundle.recommend(next_user(), k=K, exclude_seen=True)


def pipeline_top10(towers, item_vectors, index, users, histories, max_len) -> np.ndarray:
    found = []
    for start in range(0, len(users), BATCH):
        part = histories[start : start + BATCH]
        ids, mask = pad_left(part, max_len)
        vectors = towers.encode_users(users[start : start + BATCH], ids, mask)
        found.append(index.search(vectors, K, exclude=[h - 1 for h in part])[0])
    return np.concatenate(found)


def accuracy(top: np.ndarray, targets: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    hits = top == targets[:, None]
    ranks = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)
    overlap = [len(set(a) & set(b)) / K for a, b in zip(top, reference, strict=True)]
    return {
        "recall@10": float(hits.any(axis=1).mean()),
        "mrr@10": float(np.where(ranks > 0, 1.0 / np.maximum(ranks, 1), 0.0).mean()),
        "overlap@10": float(np.mean(overlap)),
    }


def run(
    artifacts_dir: Path,
    exports_dir: Path = Path("exports"),
    repeats: int = 200,
    threads: int = 1,
    notify: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    from ..api import load

    recommender = load(artifacts_dir)
    max_len = recommender.config.max_history_len
    users, histories, targets = recommender.test_queries()
    catalog = np.arange(1, recommender.model.num_items + 1)
    with pinned_threads(threads) as thread_counts:
        found = runtimes(recommender, Path(exports_dir), threads, notify)
        item_vectors = {name: towers.encode_items(catalog) for name, towers in found.items()}
        indexes = {}
        for name in plugins.retrievers().names():
            cls = plugins.retrievers().get(name)
            options = plugins.component_options(recommender.config, name)
            for runtime, vectors in item_vectors.items():
                indexes[runtime, name] = cls.build(vectors, **options)

        notify("accuracy through each pipeline")
        reference = pipeline_top10(
            found["torch"],
            item_vectors["torch"],
            indexes["torch", "exact"],
            users,
            histories,
            max_len,
        )
        quality = {
            key: accuracy(
                pipeline_top10(
                    found[key[0]], item_vectors[key[0]], index, users, histories, max_len
                ),
                targets,
                reference,
            )
            for key, index in indexes.items()
        }

        notify(f"latency, {repeats} interleaved repetitions on {threads} thread(s)")
        rng = np.random.default_rng(0)
        picked = rng.permutation(len(users))[: min(len(users), repeats)]
        single = [(users[i : i + 1], *pad_left([histories[i]], max_len)) for i in picked]
        rows_256 = rng.choice(len(users), size=BATCH, replace=len(users) < BATCH)
        batch = (users[rows_256], *pad_left([histories[i] for i in rows_256], max_len))
        calls: dict[Any, Callable[[], object]] = {}
        for name, towers in found.items():
            calls[name, "b1"] = encode_call(towers, single)
            calls[name, "b256"] = encode_call(towers, [batch])
            vectors = np.concatenate([towers.encode_users(*one) for one in single])
            searches = [(vectors[j : j + 1], [histories[i] - 1]) for j, i in enumerate(picked)]
            for retriever in plugins.retrievers().names():
                calls[name, retriever] = search_call(indexes[name, retriever], searches)
        # a reference for the headline: eager under torch.no_grad instead of inference_mode
        from ..export.torchscript import TorchTowers
        from ..export.towers import towers

        no_grad = TorchTowers(*towers(recommender.model), inference_mode=False)
        calls["torch-no-grad", "b1"] = encode_call(no_grad, single)
        bundle = load_bundle(exports_dir / "bench-onnx", retriever="hnsw", threads=threads)
        user_ids = [recommender.user_ids[users[i] - 1] for i in picked]
        calls["bundle", "recommend"] = recommend_call(bundle, user_ids)
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
        "num_items": len(catalog),
        "rows": rows,
    }
