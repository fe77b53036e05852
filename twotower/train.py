"""The training loop: AdamW on a loss plugin, validation each epoch, early stopping.

The model with the best validation Recall@K is kept; test metrics are computed
on it once, by the caller. With the same seed and thread count a run is
bit-for-bit repeatable on CPU.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from . import plugins
from .data.seen import EarlierItems
from .data.split import Examples, Split, Windows, training_examples, training_windows
from .errors import TwoTowerError
from .evaluation import evaluate_model
from .losses import TrainBatch
from .metrics import NonFiniteScores
from .towers.model import TwoTowerModel


@dataclass
class TrainResult:
    model: TwoTowerModel  # holds the best-validation weights
    best_epoch: int
    best_valid: dict[str, float]
    log: list[dict[str, Any]] = field(default_factory=list)  # one entry per epoch


def seed_everything(seed: int, num_threads: int | None) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if num_threads:
        torch.set_num_threads(num_threads)


def build_model(config, split: Split) -> TwoTowerModel:
    encoder_class = plugins.user_encoders().get(config.user_encoder)
    return TwoTowerModel(config, split.num_users, split.num_items, split.item_genres, encoder_class)


def item_counts(split: Split, num_items: int) -> torch.Tensor:
    """How often each item is a training target: the rate in-batch negatives are drawn at."""
    targets = np.concatenate([split.train(u)[1:] for u in range(1, split.num_users + 1)])
    return torch.as_tensor(np.bincount(targets, minlength=num_items + 1).astype(np.float32))


def resolve_train_mode(config, model: TwoTowerModel) -> str:
    """``sequence`` if the encoder has a causal ``encode_sequence`` and auto asks, else prefix."""
    can_sequence = hasattr(model.user_tower, "encode_sequence") and getattr(
        model.user_tower, "causal", True
    )
    if config.train_mode == "auto":
        return "sequence" if can_sequence else "prefix"
    if config.train_mode == "sequence" and not can_sequence:
        raise TwoTowerError(
            f"user encoder {config.user_encoder!r} cannot train in sequence mode "
            "(needs a causal encode_sequence); use --train-mode prefix"
        )
    if config.train_mode not in ("prefix", "sequence"):
        raise TwoTowerError(
            f"train_mode must be auto, prefix or sequence, not {config.train_mode!r}"
        )
    return config.train_mode


def prefix_batches(examples: Examples, batch_size: int, generator: torch.Generator):
    """Shuffled (users, history, targets) batches of prefix examples.

    Each history is cut to the widest history in its batch: rows are
    left-padded, so the items are at the end.
    """
    order = torch.randperm(len(examples), generator=generator).numpy()
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        history = examples.histories[rows]
        width = max(1, int((history != 0).sum(axis=1).max()))
        yield examples.users[rows], history[:, -width:], examples.targets[rows]


def window_batches(windows: Windows, batch_size: int, generator: torch.Generator):
    """Shuffled (users, inputs, targets) batches of windows, cut to their widest window."""
    order = torch.randperm(len(windows), generator=generator).numpy()
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        inputs = windows.inputs[rows]
        width = max(1, int((inputs != 0).sum(axis=1).max()))
        yield windows.users[rows], inputs[:, -width:], windows.targets[rows][:, -width:]


def encode_batch(model: TwoTowerModel, mode: str, users, history, targets, device):
    """User vectors and target items of one batch: one row per (history, target) pair."""
    user_ids = torch.as_tensor(users, device=device)
    history = torch.as_tensor(history, device=device)
    mask = history != 0
    targets = torch.as_tensor(targets, device=device)
    if mode == "prefix":
        return user_ids, history, mask, model.encode_users(user_ids, history, mask), targets
    vectors = model.user_tower.encode_sequence(user_ids, history, mask)  # [B, L, d]
    owned = targets != 0  # [B, L]
    rows = user_ids.unsqueeze(1).expand_as(targets)[owned]  # [M]
    return rows, history, mask, vectors[owned], targets[owned]  # [M, d], [M]


def weight_average(model: TwoTowerModel, decay: float) -> AveragedModel | None:
    """An exponential moving average of the weights (None when ``decay`` is 0).

    Validation, early stopping and the kept model use the average: it moves
    less from step to step than the raw weights, so the validation curve is
    smoother and the epoch it picks is less of a lucky draw.
    """
    if not decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def earlier_items_of(earlier: EarlierItems, users: torch.Tensor, targets: torch.Tensor):
    """``TrainBatch.earlier_items`` of one batch: worked out only if the loss asks."""
    return lambda: earlier.before(users.cpu().numpy(), targets.cpu().numpy())


def stop_if_diverged(epoch: int, step: int, loss: float, grad_norm: float, lr: float) -> None:
    """A NaN or infinite loss or gradient ends the run: a diverged model is never scored."""
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        raise TwoTowerError(
            f"training diverged at epoch {epoch}, step {step} (loss {loss}, gradient norm "
            f"{grad_norm}); try a lower --lr than {lr:g}"
        )


def train(
    config,
    split: Split,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> TrainResult:
    """Train on ``split`` and return the best-validation model with its log.

    ``on_step(done, total, loss)`` and ``on_epoch(entry)`` let a caller draw
    progress; ``entry`` is the epoch's ``train_log.jsonl`` object.
    """
    seed_everything(config.seed, config.num_threads)
    device = torch.device(config.device)
    model = build_model(config, split).to(device)
    mode = resolve_train_mode(config, model)
    if mode == "prefix":
        data = training_examples(split, config.max_history_len)
        make_batches, size, batch_size = prefix_batches, len(data), config.batch_size
    else:
        data = training_windows(split, config.max_history_len)
        make_batches, size = window_batches, int((data.targets != 0).sum())
        batch_size = config.sequence_batch_size
    loss_fn = plugins.losses().get(config.loss)(config, item_counts(split, split.num_items))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    averaged = weight_average(model, config.ema_decay)
    scored = averaged.module if averaged is not None else model  # what validation sees
    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = -(-len(data) // batch_size)

    best: dict[str, Any] = {"score": -1.0, "epoch": 0, "state": None, "valid": {}}
    log: list[dict[str, Any]] = []
    headline = f"recall@{config.k_eval}"
    for epoch in range(1, config.epochs + 1):
        model.train()
        started, total_loss = time.perf_counter(), 0.0
        for step, arrays in enumerate(make_batches(data, batch_size, generator), start=1):
            user_ids, history, mask, user_vecs, targets = encode_batch(model, mode, *arrays, device)
            batch = TrainBatch(
                user_ids,
                history,
                mask,
                targets,
                model.encode_items,
                split.num_items,
                earlier_items_of(split.earlier_items, user_ids, targets),
            )
            loss = loss_fn(user_vecs, model.encode_items(targets), model.temperature, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            stop_if_diverged(epoch, step, loss.item(), grad_norm.item(), config.lr)
            optimizer.step()
            if averaged is not None:
                averaged.update_parameters(model)
            total_loss += loss.item()
            if on_step is not None:
                on_step(step, steps_per_epoch, total_loss / step)
        seconds = time.perf_counter() - started
        try:
            valid = evaluate_model(scored, split, "valid", config)
        except NonFiniteScores as exc:
            raise TwoTowerError(f"training diverged at epoch {epoch}: {exc}") from None
        entry = {
            "epoch": epoch,
            "loss": total_loss / steps_per_epoch,
            "valid": valid,
            "seconds": seconds,
            "examples_per_second": size / seconds,
            "temperature": model.temperature.item(),
        }
        log.append(entry)
        if valid[headline] > best["score"]:
            best = {"score": valid[headline], "epoch": epoch, "valid": valid}
            best["state"] = copy.deepcopy(scored.state_dict())
        if on_epoch is not None:
            on_epoch(entry)
        if epoch - best["epoch"] >= config.patience:
            break
    model.load_state_dict(best["state"])
    model.eval()
    return TrainResult(model, best["epoch"], best["valid"], log)
