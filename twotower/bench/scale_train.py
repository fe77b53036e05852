"""Scale-train suite: the stages of a fit on MovieLens-shaped synthetic data, ML-1M to ML-25M.

For each workload (``bench/workloads.py``, written as Parquet) a fresh
process runs a fit's stages in order: read the files through the ``files``
dataset, split (with the seen-item lookup), cut the training windows, a
fixed number of training steps, full-catalog evaluation of every user's
test target, and the item vectors with their HNSW index. Each stage's
seconds and peak resident memory are recorded (``timing.stage_peak``); a
process per workload keeps one workload's memory out of the next's.
Training examples/s are then measured on more ranks under torchrun, one
torch thread per rank, against one rank with one thread.

How a stage grows is the exponent of its seconds against the interactions
between consecutive workloads (1 is linear), and against what else may
drive it: the items (the index is built over the catalog) and users x items
(evaluation scores every user against every item).

Run as ``python -m twotower.bench.scale_train stages|ranks REQUEST`` a
process is one of those workers, answering in JSON on stdout.
"""

from __future__ import annotations

import gc
import itertools
import json
import math
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import TwoTowerConfig
from ..data import files
from ..errors import TwoTowerError
from . import workloads
from .timing import environment, stage_peak

STAGES = ("read", "split", "windows", "train", "evaluate", "index")
WARMUP = 3  # training steps before the timed ones


# what the suite decides itself: the data (its workloads, read by the files dataset) and
# how long it trains (``--steps``)
SETS = (
    "dataset",
    *files.load.settings,
    "data_dir",
    "artifacts_dir",
    "download",
    "epochs",
    "patience",
)


def configured(settings: dict[str, Any], paths: Sequence[str]) -> TwoTowerConfig:
    """The run's settings reading a workload's files through the ``files`` dataset."""
    interactions, items = paths
    return TwoTowerConfig.from_dict(
        {**settings, "dataset": "files", "interactions": interactions, "items": items}
    )


def timed_steps(training, config, steps: int) -> dict[str, float]:
    """``steps`` training steps after ``WARMUP`` untimed ones: examples, seconds, examples/s."""
    import time

    import torch

    from ..train import train_epoch

    generator = torch.Generator().manual_seed(config.seed)
    train_epoch(training, config, 1, generator, max_steps=WARMUP)
    started = time.perf_counter()
    done = train_epoch(training, config, 1, generator, max_steps=steps)
    seconds = time.perf_counter() - started
    return {
        "steps": done.steps,
        "examples": done.examples,
        "seconds": seconds,
        "examples_per_second": done.examples / seconds,
    }


def stages(request: dict[str, Any]) -> dict[str, Any]:
    """Every stage of a fit on one workload, in this process."""
    from .. import api, plugins
    from ..data.split import make_split, training_windows
    from ..evaluation import evaluate_model
    from ..train import start_training

    config = configured(request["settings"], request["paths"])
    records: dict[str, dict[str, float]] = {stage: {} for stage in STAGES}
    with stage_peak(records["read"]):
        dataset = api.load_dataset(config)
    frame = dataset.interactions
    counts = {
        "interactions": len(frame),
        "users": int(frame["user"].nunique()),
        "items": int(frame["item"].nunique()),
    }
    with stage_peak(records["split"]):
        split = make_split(dataset, config.min_rating, config.min_user_positives)
        split.earlier_items  # noqa: B018 (built here: evaluation and the losses look items up in it)
    del dataset, frame
    gc.collect()
    with stage_peak(records["windows"]):
        windows = training_windows(split, config.max_history_len)
    shape = {
        "positives": int(sum(len(s) for s in split.sequences)),
        "split_users": split.num_users,
        "split_items": split.num_items,
        "windows": len(windows),
        "training_pairs": int(np.count_nonzero(windows.targets)),
    }
    del windows
    gc.collect()
    with stage_peak(records["train"]):
        training = start_training(config, split)
        rate = timed_steps(training, config, request["steps"])
    with stage_peak(records["evaluate"]):
        metrics = evaluate_model(training.model, split, "test", config)
    with stage_peak(records["index"]):
        vectors = training.model.catalog_vectors().cpu().numpy()
        hnsw = plugins.retrievers().get("hnsw")
        hnsw.build(vectors, **plugins.component_options(config, "hnsw", hnsw))
    return {
        "counts": counts,
        "shape": shape,
        "stages": records,
        "training": rate,
        "test_recall@10": metrics["recall@10"],
    }


def ranks(request: dict[str, Any]) -> dict[str, Any] | None:
    """Training examples/s of this rank's group (torchrun); rank 0 answers."""
    from .. import api, distributed
    from ..data.split import make_split
    from ..train import start_training

    config = configured(request["settings"], request["paths"])
    with distributed.session(config.device) as context:
        split = make_split(api.load_dataset(config), config.min_rating, config.min_user_positives)
        record: dict[str, float] = {}
        with stage_peak(record):
            rate = timed_steps(start_training(config, split, context), config, request["steps"])
        rate["peak_mib"] = record["peak_mib"]  # of rank 0
        return {"ranks": context.world_size, **rate} if context.is_main else None


def worker(command: list[str], what: str) -> dict[str, Any]:
    """Run one worker process and read its JSON answer."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise TwoTowerError(f"bench scale-train: {what} failed ({last})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def exponent(seconds_ratio: float, size_ratio: float) -> float | None:
    """``seconds ~ size ** exponent`` between two runs; None when the size did not change."""
    return math.log(seconds_ratio) / math.log(size_ratio) if size_ratio != 1 else None


def growth(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per stage and pair of consecutive workloads: log(seconds ratio) / log(size ratio)."""
    result = []
    by_stage: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_stage.setdefault(row["stage"], []).append(row)
    for stage, runs in by_stage.items():
        for small, large in itertools.pairwise(runs):
            size = large["interactions"] / small["interactions"]
            area = (large["users"] * large["items"]) / (small["users"] * small["items"])
            catalog = large["items"] / small["items"]
            seconds = large["seconds"] / small["seconds"]
            result.append(
                {
                    "stage": stage,
                    "from": small["workload"],
                    "to": large["workload"],
                    "interactions_ratio": size,
                    "seconds_ratio": seconds,
                    "exponent": exponent(seconds, size),
                    "exponent_items": exponent(seconds, catalog),
                    "exponent_users_x_items": exponent(seconds, area),
                }
            )
    return result


def run(
    names: Sequence[str],
    steps: int,
    rank_counts: Sequence[int],
    settings: TwoTowerConfig,
    seed: int = 0,
    notify: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Generate each workload, run its stages in a worker, then its training on more ranks."""
    unknown = [name for name in names if name not in workloads.SHAPES]
    if unknown:
        raise TwoTowerError(
            f"unknown workload {unknown[0]!r}; choose from {', '.join(workloads.SHAPES)}"
        )
    plain = settings.to_dict()
    described, rows, training = [], [], []
    with tempfile.TemporaryDirectory(prefix="twotower-scale-train-") as folder:
        for name in names:
            notify(f"{name}: generating")
            made: dict[str, float] = {}
            with stage_peak(made):
                paths = workloads.write(workloads.SHAPES[name], Path(folder), seed)
            files = [str(path) for path in paths]
            request = json.dumps({"settings": plain, "paths": files, "steps": steps})
            notify(f"{name}: read, split, windows, {steps} steps, evaluation, index")
            module = [sys.executable, "-m", __name__]
            measured = worker([*module, "stages", request], f"{name} stages")
            counts = {"workload": name, **measured["counts"]}
            described.append(
                {
                    **counts,
                    **measured["shape"],
                    "generate_s": made["seconds"],
                    "test_recall@10": measured["test_recall@10"],
                }
            )
            for stage in STAGES:
                rows.append({**counts, "stage": stage, **measured["stages"][stage]})
            training.append({**counts, "ranks": 1, **measured["training"]})
            for count in (c for c in rank_counts if c > 1):
                notify(f"{name}: {steps} steps on {count} ranks")
                launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
                launch += ["--nproc-per-node", str(count), "-m", __name__, "ranks", request]
                training.append({**counts, **worker(launch, f"{name} on {count} ranks")})
            for path in paths:
                path.unlink()
    return {
        **environment({"torch_per_rank": settings.num_threads or 0}),
        "steps": steps,
        "warmup_steps": WARMUP,
        "seed": seed,
        "settings": plain,
        "workloads": described,
        "rows": rows,
        "training": training,
        "growth": growth(rows),
    }


if __name__ == "__main__":
    answer = {"stages": stages, "ranks": ranks}[sys.argv[1]](json.loads(sys.argv[2]))
    if answer is not None:
        print(json.dumps(answer))
