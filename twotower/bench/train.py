"""Training suites: accuracy of named configurations over seeds, and encoders x losses.

Every run is a real ``twotower.fit`` (early stopping, test evaluation,
artifacts written to a temporary folder), so its wall time is what a user
waits for. Accuracy is reported as mean and spread over seeds, beside the
popularity baseline under the same protocol, with Recall@10 by target
position (training targets, validation, test) as the over-fitting diagnostic.

A contender is a configuration with a name: ``default`` (every default), a
TOML file (``configs/sasrec.toml``, named after the file) or settings over
the defaults joined by ``+`` (``user_encoder=gru+loss=logq-softmax``).
"""

from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import TwoTowerConfig, read_toml
from ..errors import TwoTowerError
from .timing import environment

HEADLINE = ("recall@10", "ndcg@10", "mrr@10")


@dataclass(frozen=True)
class Contender:
    name: str
    config: TwoTowerConfig


def parse_value(text: str) -> Any:
    """A setting's value as TOML would read it: numbers and booleans, else text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def contender(spec: str, base: TwoTowerConfig) -> Contender:
    """``default``, a TOML file, or ``key=value+key=value`` over ``base``."""
    from ..validation import check_settings, validate

    if spec == "default":
        return Contender(spec, base)
    if spec.endswith(".toml"):  # as fit --config reads it: checked, [extra] over --set
        values = check_settings(read_toml(spec), where=f"{spec}: ")
        values["extra"] = {**base.extra, **values.get("extra", {})}
        return Contender(Path(spec).stem, validate(base.replace(**without_seed(values, spec))))
    changes = {}
    for part in spec.split("+"):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise TwoTowerError(
                f"contender {spec!r}: expected default, FILE.toml or key=value[+key=value]"
            )
        changes[key.replace("-", "_")] = parse_value(value)
    unknown = sorted(set(changes) - set(base.to_dict()))
    if unknown:
        raise TwoTowerError(f"contender {spec!r}: unknown setting(s) {', '.join(unknown)}")
    return Contender(spec, validate(base.replace(**without_seed(changes, spec))))


def without_seed(changes: dict[str, Any], spec: str) -> dict[str, Any]:
    """A contender's settings; a seed among them is refused: ``--seeds`` sets every run's."""
    if "seed" in changes:
        raise TwoTowerError(f"contender {spec!r} sets seed, which --seeds gives every run")
    return changes


def distinct_names(contenders: Sequence[Contender]) -> Sequence[Contender]:
    """Contenders named alike would have their runs pooled into one row."""
    seen: set[str] = set()
    for entry in contenders:
        if entry.name in seen:
            raise TwoTowerError(
                f"two contenders are named {entry.name!r}: give each a name of its own "
                "(TOML files are named after the file)"
            )
        seen.add(entry.name)
    return contenders


def grid(base: TwoTowerConfig, encoders: Sequence[str], losses: Sequence[str]) -> list[Contender]:
    """Every user encoder x every loss over ``base``, each checked before any runs."""
    from ..validation import validate

    return [
        Contender(f"{encoder} + {loss}", validate(base.replace(user_encoder=encoder, loss=loss)))
        for encoder in encoders
        for loss in losses
    ]


def one_run(config: TwoTowerConfig) -> dict[str, Any]:
    from ..api import fit, load, prepare
    from ..evaluation import recall_by_position

    with tempfile.TemporaryDirectory(prefix="twotower-bench-") as folder:
        result = fit(config.replace(artifacts_dir=folder), progress=False)
        model = load(result.artifacts_dir).towers.model
        by_position = recall_by_position(model, prepare(config.replace(download=False)), config)
    log = result.log
    best = result.best_epoch
    return {
        "seed": config.seed,
        "best_epoch": best,
        "epochs_run": len(log),
        "seconds": result.seconds,
        "seconds_to_best_epoch": sum(entry["seconds"] for entry in log[:best]),
        "examples_per_second": statistics.fmean(entry["examples_per_second"] for entry in log),
        "valid": {k: result.valid[k] for k in HEADLINE},
        "test": {k: result.test[k] for k in HEADLINE},
        "recall@10_by_position": by_position,
        "popularity": {
            stage: {k: result.popularity[stage][k] for k in HEADLINE} for stage in ("valid", "test")
        },
    }


def summarise(name: str, config: TwoTowerConfig, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of one contender."""
    row: dict[str, Any] = {
        "contender": name,
        "user_encoder": config.user_encoder,
        "loss": config.loss,
        "seeds": len(runs),
    }
    for stage in ("test", "valid"):
        for key in HEADLINE:
            values = [run[stage][key] for run in runs]
            row[f"{stage}_{key}_mean"] = statistics.fmean(values)
            row[f"{stage}_{key}_std"] = statistics.pstdev(values)
    for key in ("seconds", "seconds_to_best_epoch", "examples_per_second", "best_epoch"):
        row[f"{key}_mean"] = statistics.fmean(run[key] for run in runs)
    positions = runs[0]["recall@10_by_position"]
    row["recall@10_by_position"] = {
        p: statistics.fmean(run["recall@10_by_position"][p] for run in runs) for p in positions
    }
    row["popularity"] = runs[0]["popularity"]
    return row


def run(
    contenders: Sequence[Contender],
    seeds: Sequence[int] = (0, 1, 2),
    notify: Callable[[str], None] = lambda message: None,
    on_run: Callable[[dict[str, Any]], None] = lambda result: None,
) -> dict[str, Any]:
    """Fit every contender with every seed; one summary row per contender.

    ``on_run(result)`` gets the result so far after every fit (the contenders
    with at least one run), so a long benchmark that stops keeps what it measured.
    """
    runs: dict[str, list[dict[str, Any]]] = {}
    total, done = len(contenders) * len(seeds), 0
    for entry in contenders:
        for seed in seeds:
            done += 1
            notify(f"[{done}/{total}] {entry.name}, seed {seed}")
            runs.setdefault(entry.name, []).append(one_run(entry.config.replace(seed=seed)))
            on_run(result_of(contenders, runs))
    return result_of(contenders, runs)


def result_of(contenders: Sequence[Contender], runs: dict[str, list[dict[str, Any]]]) -> dict:
    """The suite's result over the runs done: machine, contenders, runs and summaries."""
    import torch

    started = [entry for entry in contenders if entry.name in runs]
    threads = {"torch": contenders[0].config.num_threads or torch.get_num_threads()}
    return {
        **environment(threads),
        "contenders": {entry.name: entry.config.to_dict() for entry in started},
        "runs": runs,
        "summary": [summarise(entry.name, entry.config, runs[entry.name]) for entry in started],
    }
