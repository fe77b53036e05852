"""Serving latency on one thread: the user tower in PyTorch eager vs onnxruntime, and
end-to-end ``bundle.recommend`` with HNSW.

Measured, with warm-up and interleaved repetitions (every round visits each
contender once, in a fresh random order, so a noisy neighbour slows all of
them alike):

- p50/p99 of the user tower at batch 1 and batch 256, PyTorch eager vs
  onnxruntime, on real users' histories. Headline: onnx/eager p50 at batch 1
  (goal <= 0.25).
- p50/p99 of ``bundle.recommend(user, k=10, exclude_seen=True)`` through the
  torch-free runtime with the HNSW index (goal p50 < 0.5 ms).

Everything runs on one thread: OMP/OPENBLAS/MKL_NUM_THREADS=1 are set before
numpy and torch are imported, ``torch.set_num_threads(1)``, onnxruntime with
``intra_op_num_threads=1``. Thread counts, machine, library versions and the
command line go into the JSON next to the numbers.

    python benchmarks/bench_serving.py --artifacts-dir data/artifacts \\
        --bundle exports/movielens-100k-transformer-onnx --repeats 500

Without ``--bundle`` an ONNX bundle is exported into a temporary folder first.
Results go to ``<out>.json`` and ``<out>.md`` (default
``benchmarks/results/bench_serving``).
"""

from __future__ import annotations

import os

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
for _variable in THREAD_VARIABLES:  # before numpy / torch / onnxruntime load their pools
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

BATCH = 256
K = 10
GOAL_RATIO_B1 = 0.25  # onnxruntime p50 / eager p50, user tower, batch 1
GOAL_RECOMMEND_P50_MS = 0.5  # bundle.recommend with HNSW
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_serving"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="One-thread serving latency: user tower eager vs onnxruntime, "
        "and bundle.recommend with HNSW."
    )
    parser.add_argument(
        "--artifacts-dir", type=Path, required=True, help="artifacts of `twotower fit`"
    )
    parser.add_argument(
        "--bundle",
        type=Path,
        help="ONNX bundle exported from these artifacts (default: export one to a temp folder)",
    )
    parser.add_argument(
        "--repeats", type=int, default=300, help="timed rounds at batch 1 and end to end"
    )
    parser.add_argument(
        "--batch-repeats", type=int, help="timed rounds at batch 256 (default: min(repeats, 50))"
    )
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls of each contender")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"results path without suffix: writes OUT.json and OUT.md (default: {DEFAULT_OUT})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the user sample and order")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.batch_repeats is None:
        args.batch_repeats = min(args.repeats, 50)
    return args


# --- timing ------------------------------------------------------------------------------


def rotating(items: list) -> Callable[[], Any]:
    """The next of ``items`` on each call, round and round."""
    state = {"i": -1}

    def next_item():
        state["i"] = (state["i"] + 1) % len(items)
        return items[state["i"]]

    return next_item


def interleaved(
    calls: dict[str, Callable[[], object]], repeats: dict[str, int], warmup: int, seed: int
) -> dict[str, list[float]]:
    """Milliseconds per call: ``repeats[name]`` samples each, contenders shuffled every round."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(max(repeats.values())):
        names = [name for name in calls if round_ < repeats[name]]
        rng.shuffle(names)
        for name in names:
            call = calls[name]
            started = time.perf_counter()
            call()
            samples[name].append((time.perf_counter() - started) * 1000.0)
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    values = np.asarray(samples)
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
        "mean_ms": float(values.mean()),
        "samples": len(values),
    }


# --- the benchmark -----------------------------------------------------------------------


def open_bundle(args: argparse.Namespace, recommender, scratch: Path) -> tuple[Path, bool]:
    """The bundle to serve from: ``--bundle`` (checked against the artifacts) or a fresh export."""
    from twotower import artifacts
    from twotower.export.bundle import BUNDLE_FORMAT_VERSION, export_bundle

    if args.bundle is None:
        folder, _ = export_bundle(args.artifacts_dir, scratch / "bundle", format="onnx")
        return folder, True
    manifest = artifacts.read_manifest(args.bundle, "bundle", BUNDLE_FORMAT_VERSION)
    if manifest.get("format") != "onnx":
        sys.exit(f"error: {args.bundle} is a {manifest.get('format')!r} bundle; this needs onnx")
    source = manifest.get("source_model_sha256")
    if source and source != artifacts.sha256_of(recommender.folder / artifacts.MODEL):
        sys.exit(f"error: {args.bundle} was not exported from {args.artifacts_dir}")
    return args.bundle, False


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):  # allowed only before torch's first parallel work
        torch.set_num_interop_threads(1)

    from twotower import load
    from twotower.artifacts import library_versions
    from twotower.data.padding import pad_left
    from twotower.export.towers import towers
    from twotower.serving import load_bundle

    recommender = load(args.artifacts_dir)
    max_len = recommender.config.max_history_len
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as scratch:
        bundle_dir, exported = open_bundle(args, recommender, Path(scratch))
        bundle = load_bundle(bundle_dir, retriever="hnsw", threads=1)
        user_tower, _ = towers(recommender.model)
        session = bundle.towers.user  # the onnxruntime session the runtime serves with
        names = [i.name for i in session.get_inputs()]

        rng = np.random.default_rng(args.seed)
        user_ids = list(bundle.user_ids)
        picked = [user_ids[i] for i in rng.permutation(len(user_ids))[: args.repeats]]
        batch_users = [user_ids[i] for i in rng.choice(len(user_ids), BATCH)]

        def inputs(users: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            index = np.array([bundle.user_index[u] for u in users], dtype=np.int64)
            ids, mask = pad_left([bundle.histories[u] for u in users], max_len)
            return index, ids, mask

        singles = [inputs([u]) for u in picked]
        batch = inputs(batch_users)

        def eager_call(cases):
            tensors = [tuple(torch.from_numpy(a) for a in case) for case in cases]
            next_case = rotating(tensors)

            def call():
                with torch.inference_mode():
                    return user_tower(*next_case())

            return call

        def onnx_call(cases):
            feeds = [dict(zip(names, case, strict=True)) for case in cases]
            next_feed = rotating(feeds)
            return lambda: session.run(None, next_feed())

        # the two runtimes must compute the same vectors before their speed means anything
        for case in (*singles[:20], batch):
            with torch.inference_mode():
                eager = user_tower(*(torch.from_numpy(a) for a in case)).numpy()
            onnx = session.run(None, dict(zip(names, case, strict=True)))[0]
            worst = float(np.abs(eager - onnx).max())
            if worst > 1e-4:
                sys.exit(f"error: onnxruntime and eager differ by {worst:.2e}; re-export")

        next_user = rotating(picked)
        calls = {
            "eager_b1": eager_call(singles),
            "onnx_b1": onnx_call(singles),
            "eager_b256": eager_call([batch]),
            "onnx_b256": onnx_call([batch]),
            "recommend_hnsw": lambda: bundle.recommend(next_user(), k=K, exclude_seen=True),
        }
        repeats = {name: args.repeats for name in calls}
        repeats["eager_b256"] = repeats["onnx_b256"] = args.batch_repeats
        started = time.perf_counter()
        samples = interleaved(calls, repeats, args.warmup, args.seed)
        seconds = time.perf_counter() - started

    stats = {name: summary(values) for name, values in samples.items()}
    ratio_b1 = stats["onnx_b1"]["p50_ms"] / stats["eager_b1"]["p50_ms"]
    ratio_b256 = stats["onnx_b256"]["p50_ms"] / stats["eager_b256"]["p50_ms"]
    recommend_p50 = stats["recommend_hnsw"]["p50_ms"]
    config = recommender.config
    return {
        "benchmark": "serving",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(),
        },
        "versions": library_versions(),
        "threads": {
            "torch": torch.get_num_threads(),
            "torch_interop": torch.get_num_interop_threads(),
            "onnxruntime_intra_op": session.get_session_options().intra_op_num_threads,
            "onnxruntime_inter_op": session.get_session_options().inter_op_num_threads,
            **{name: os.environ.get(name) for name in THREAD_VARIABLES},
        },
        "artifacts_dir": str(args.artifacts_dir),
        "bundle": None if exported else str(bundle_dir),
        "model": {
            "dataset": config.dataset,
            "user_encoder": config.user_encoder,
            "embedding_dim": config.embedding_dim,
            "max_history_len": max_len,
            "num_users": recommender.model.num_users,
            "num_items": recommender.model.num_items,
        },
        "repeats": repeats,
        "warmup": args.warmup,
        "seconds": round(seconds, 1),
        "user_tower": {
            "batch_1": {
                "eager": stats["eager_b1"],
                "onnxruntime": stats["onnx_b1"],
                "onnx_over_eager_p50": ratio_b1,
            },
            "batch_256": {
                "eager": stats["eager_b256"],
                "onnxruntime": stats["onnx_b256"],
                "onnx_over_eager_p50": ratio_b256,
            },
        },
        "recommend_hnsw_k10_exclude_seen": stats["recommend_hnsw"],
        "goals": {
            "user_tower_onnx_over_eager_p50_b1": {
                "goal": f"<= {GOAL_RATIO_B1}",
                "value": ratio_b1,
                "met": ratio_b1 <= GOAL_RATIO_B1,
            },
            "recommend_hnsw_p50_ms": {
                "goal": f"< {GOAL_RECOMMEND_P50_MS}",
                "value": recommend_p50,
                "met": recommend_p50 < GOAL_RECOMMEND_P50_MS,
            },
        },
    }


def markdown(result: dict[str, Any]) -> str:
    tower = result["user_tower"]
    model, machine, threads = result["model"], result["machine"], result["threads"]
    lines = [
        "# Serving latency, one thread",
        "",
        f"{model['dataset']}, {model['user_encoder']} user tower (d={model['embedding_dim']}, "
        f"max history {model['max_history_len']}), {model['num_items']} items; "
        f"{machine['platform']}, {machine['cpu_count']} CPUs, created {result['created']}.",
        "",
        "| what | p50 ms | p99 ms |",
        "| --- | ---: | ---: |",
    ]
    for batch, label in (("batch_1", "batch 1"), ("batch_256", "batch 256")):
        for runtime in ("eager", "onnxruntime"):
            row = tower[batch][runtime]
            lines.append(
                f"| user tower, {runtime}, {label} | {row['p50_ms']:.4f} | {row['p99_ms']:.4f} |"
            )
    end = result["recommend_hnsw_k10_exclude_seen"]
    lines.append(
        f"| bundle.recommend, HNSW, k=10, exclude seen | {end['p50_ms']:.4f} "
        f"| {end['p99_ms']:.4f} |"
    )
    lines += ["", "| goal | value | target | met |", "| --- | ---: | --- | --- |"]
    for name, goal in result["goals"].items():
        lines.append(f"| {name} | {goal['value']:.4f} | {goal['goal']} | {goal['met']} |")
    lines += [
        "",
        f"onnx/eager p50 at batch 256: {tower['batch_256']['onnx_over_eager_p50']:.3f}.",
        f"Threads: torch {threads['torch']}, onnxruntime intra-op "
        f"{threads['onnxruntime_intra_op']}, "
        + ", ".join(f"{name}={threads[name]}" for name in THREAD_VARIABLES)
        + f". Rounds: {result['repeats']['onnx_b1']} at batch 1 and end to end, "
        f"{result['repeats']['onnx_b256']} at batch 256; warm-up {result['warmup']} calls each.",
        "",
        f"Command: `{result['command']}`",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from twotower.errors import TwoTowerError

    args = parse_args(argv)
    try:
        result = run(args)
    except TwoTowerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out.with_name(out.name + ".json"), out.with_name(out.name + ".md")
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
