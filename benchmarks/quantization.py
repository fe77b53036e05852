"""What each quantization an export format offers costs and gives, on the fit's test users.

For the fp32 bundle of every format that offers a quantization, and for each
of its schemes, on one thread:

- accuracy: test Recall@10 through the bundle and its change from PyTorch's,
  and the share of PyTorch's top-10 items it keeps (the export's parity report);
- batch dependence: every test user's top-10 when asked alone against the
  same user's top-10 in batches of 256, as ``recommend`` and ``recommend_batch``
  ask (share of users with the identical list, overlap@10, largest change of a
  vector component);
- user-tower latency, p50 at batch 1 and 256, interleaved, and as a ratio to
  the fp32 bundle's in the same run.

    .venv/bin/python benchmarks/quantization.py [ARTIFACTS_DIR]   # default data/artifacts
    # writes results/quantization.{json,md}
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from twotower.bench import report
from twotower.bench.serving import encode_call
from twotower.bench.timing import environment, interleaved, pinned_threads
from twotower.data.padding import pad_left
from twotower.export.bundle import export_bundle, offered_quantizations
from twotower.metrics import overlap_at_k
from twotower.recommendation import top_k
from twotower.serving import load_bundle

RESULTS = Path(__file__).parent / "results"
K = 10
BATCH = 256
REPEATS = 500


def batch_dependence(bundle, users, histories) -> dict[str, float]:
    """Each user's top-10 asked alone against the same user's top-10 in batches of 256."""
    together = bundle.encode(users, histories)
    alone = np.concatenate(
        [bundle.encode(users[i : i + 1], histories[i : i + 1]) for i in range(len(users))]
    )
    exact = bundle.retriever("exact")
    top_together = top_k(exact, together, histories, K, exclude_seen=True)[0]
    top_alone = top_k(exact, alone, histories, K, exclude_seen=True)[0]
    return {
        "alone_identical_top10": float(np.mean((top_alone == top_together).all(axis=1))),
        "alone_overlap@10": overlap_at_k(top_alone, top_together),
        "alone_max_abs_diff": float(np.abs(alone - together).max()),
    }


def main() -> int:
    artifacts_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("data/artifacts")
    variants = [
        (format, scheme)
        for format, schemes in offered_quantizations().items()
        if schemes
        for scheme in (None, *schemes)
    ]
    rows, bundles = [], {}
    with tempfile.TemporaryDirectory() as exports, pinned_threads(1) as threads:
        for format, scheme in variants:
            name = f"{format}-{scheme}" if scheme else format
            started = time.perf_counter()
            folder, manifest = export_bundle(artifacts_dir, Path(exports) / name, format, scheme)
            seconds = time.perf_counter() - started
            bundles[name] = bundle = load_bundle(folder, threads=1)
            users, histories, _ = bundle.test_queries()
            parity = manifest["parity"]
            rows.append(
                {
                    "bundle": name,
                    "format": format,
                    "export_seconds": seconds,
                    "test_recall@10": parity["test_recall@10"]["bundle"],
                    "recall_delta": parity["test_recall@10"]["delta"],
                    "top10_overlap_with_torch": parity["top10_overlap"],
                    **batch_dependence(bundle, users, histories),
                }
            )
            print(name, {k: v for k, v in rows[-1].items() if k != "bundle"}, flush=True)
        rng = np.random.default_rng(0)
        picked = rng.permutation(len(users))[:REPEATS]
        max_len = next(iter(bundles.values())).max_history_len
        single = [(users[i : i + 1], *pad_left([histories[i]], max_len)) for i in picked]
        rows_256 = rng.choice(len(users), size=BATCH, replace=len(users) < BATCH)
        batch = (users[rows_256], *pad_left([histories[i] for i in rows_256], max_len))
        calls = {}
        for name, bundle in bundles.items():
            calls[name, "b1"] = encode_call(bundle.towers, single)
            calls[name, "b256"] = encode_call(bundle.towers, [batch])
        samples = interleaved(calls, REPEATS, burst=10)
    for row in rows:
        for size in ("b1", "b256"):
            p50 = float(np.median(samples[row["bundle"], size]))
            fp32 = float(np.median(samples[row["format"], size]))
            row[f"user_p50_ms_{size}"] = p50
            row[f"user_p50_{size}_over_fp32"] = p50 / fp32
    command = f".venv/bin/python benchmarks/quantization.py {artifacts_dir}"
    result = {
        "command": command,
        **environment(threads),
        "test_users": len(users),
        "repeats": REPEATS,
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    report.write_json(result, RESULTS / "quantization.json")
    columns = [
        ("bundle", lambda r: r["bundle"]),
        ("test Recall@10", report.number("test_recall@10", ".4f")),
        ("change vs PyTorch", report.number("recall_delta", "+.4f")),
        ("top-10 overlap with PyTorch", report.number("top10_overlap_with_torch", ".4f")),
        ("alone = in batch, top-10", report.number("alone_identical_top10", ".1%")),
        ("alone vs in batch, overlap@10", report.number("alone_overlap@10", ".4f")),
        ("alone vs in batch, max abs diff", report.number("alone_max_abs_diff", ".1e")),
        ("user p50 ms b1", report.number("user_p50_ms_b1", ".3f")),
        ("b1 / fp32", report.number("user_p50_b1_over_fp32", ".2f")),
        ("user p50 ms b256", report.number("user_p50_ms_b256", ".2f")),
        ("b256 / fp32", report.number("user_p50_b256_over_fp32", ".2f")),
        ("export s", report.number("export_seconds", ".1f")),
    ]
    lines = [
        *report.preamble(result, "Quantization (see benchmarks/quantization.py)"),
        f"{len(users)} test users; latency: {REPEATS} interleaved calls per contender, one thread.",
        "",
        report.table(columns, rows),
    ]
    report.write_text(RESULTS / "quantization.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
