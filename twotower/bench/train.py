"""Training suite: speed per encoder, and accuracy over encoders x losses x seeds.

Every run is a real ``twotower.fit`` (early stopping, test evaluation,
artifacts written to a temporary folder), so its wall time is what a user
waits for. Accuracy is reported as mean and spread over seeds, beside the
popularity baseline under the same protocol.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from ..config import TwoTowerConfig
from .timing import environment

HEADLINE = ("recall@10", "ndcg@10", "mrr@10")


def one_run(config: TwoTowerConfig) -> dict[str, Any]:
    from ..api import fit

    with tempfile.TemporaryDirectory(prefix="twotower-bench-") as folder:
        result = fit(config.replace(artifacts_dir=folder), progress=False)
    log = result.log
    best = result.best_epoch
    return {
        "user_encoder": config.user_encoder,
        "loss": config.loss,
        "seed": config.seed,
        "best_epoch": best,
        "epochs_run": len(log),
        "seconds": result.seconds,
        "seconds_to_best_epoch": sum(entry["seconds"] for entry in log[:best]),
        "examples_per_second": statistics.fmean(entry["examples_per_second"] for entry in log),
        "valid": {k: result.valid[k] for k in HEADLINE},
        "test": {k: result.test[k] for k in HEADLINE},
        "popularity_test": {k: result.popularity["test"][k] for k in HEADLINE},
    }


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds for each (encoder, loss)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["user_encoder"], run["loss"]), []).append(run)
    summary = []
    for (encoder, loss), members in groups.items():
        row: dict[str, Any] = {"user_encoder": encoder, "loss": loss, "seeds": len(members)}
        for stage in ("test", "valid"):
            for key in HEADLINE:
                values = [m[stage][key] for m in members]
                row[f"{stage}_{key}_mean"] = statistics.fmean(values)
                row[f"{stage}_{key}_std"] = statistics.pstdev(values)
        for key in ("seconds", "seconds_to_best_epoch", "examples_per_second"):
            row[f"{key}_mean"] = statistics.fmean(m[key] for m in members)
        row["popularity_test_recall@10"] = members[0]["popularity_test"]["recall@10"]
        summary.append(row)
    return summary


def run(
    base: TwoTowerConfig,
    encoders: Sequence[str],
    losses: Sequence[str],
    seeds: Sequence[int] = (0, 1, 2),
    notify: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    runs = []
    total = len(encoders) * len(losses) * len(seeds)
    for encoder in encoders:
        for loss in losses:
            for seed in seeds:
                notify(f"[{len(runs) + 1}/{total}] {encoder} + {loss}, seed {seed}")
                config = base.replace(user_encoder=encoder, loss=loss, seed=seed)
                runs.append(one_run(config))
    import torch

    threads = {"torch": base.num_threads or torch.get_num_threads()}
    return {
        **environment(threads),
        "config": base.to_dict(),
        "runs": runs,
        "summary": summarise(runs),
    }
