"""The training loop: AdamW on a loss plugin, validation each epoch, early stopping.

The model with the best validation Recall@K is kept; test metrics are computed
on it once, by the caller. With the same seed and thread count a run is
bit-for-bit repeatable on CPU.

Under torchrun the same loop trains data-parallel (``twotower.distributed``):
every rank draws the same shuffled order, each global batch of N x B rows is
cut into the ranks' shares, the step runs under DistributedDataParallel, and
validation is sharded over users; the early-stopping decision is rank 0's.
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
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from . import distributed, plugins
from .contracts import cannot_train_in_sequence, capability
from .data.seen import EarlierItems
from .data.split import Examples, Split, Windows, training_examples, training_windows
from .distributed import SINGLE, Context
from .errors import TwoTowerError, refused_as
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
    encoder = model.user_tower
    can_sequence = capability(encoder, "encode_sequence") is not None and bool(
        capability(encoder, "causal")
    )
    if config.train_mode == "auto":
        return "sequence" if can_sequence else "prefix"
    if config.train_mode == "sequence" and not can_sequence:
        raise cannot_train_in_sequence(config.user_encoder)
    if config.train_mode not in ("prefix", "sequence"):
        raise TwoTowerError(
            f"train_mode must be auto, prefix or sequence, not {config.train_mode!r}"
        )
    return config.train_mode


def batch_rows(count: int, batch_size: int, generator: torch.Generator, context: Context):
    """Shuffled row numbers of each batch this rank trains on.

    Every rank draws the same order; batch k of one process with batch size
    N x B is cut into N contiguous shares, rank r's share being its batch k.
    A last batch with fewer rows than ranks is left out (DistributedDataParallel
    needs a step on every rank); on one process every row is trained.
    """
    order = torch.randperm(count, generator=generator).numpy()
    step = batch_size * context.world_size
    for start in range(0, len(order), step):
        rows = order[start : start + step]
        if len(rows) < context.world_size:
            return
        yield rows[context.shard(len(rows))]


def prefix_batches(
    examples: Examples, batch_size: int, generator: torch.Generator, context: Context = SINGLE
):
    """Shuffled (users, history, targets) batches of prefix examples.

    Each history is cut to the widest history in its batch: rows are
    left-padded, so the items are at the end.
    """
    for rows in batch_rows(len(examples), batch_size, generator, context):
        history = examples.histories(rows)
        width = max(1, int((history != 0).sum(axis=1).max()))
        yield examples.users[rows], history[:, -width:], examples.targets[rows]


def window_batches(
    windows: Windows, batch_size: int, generator: torch.Generator, context: Context = SINGLE
):
    """Shuffled (users, inputs, targets) batches of windows, cut to their widest window."""
    for rows in batch_rows(len(windows), batch_size, generator, context):
        inputs = windows.inputs[rows]
        width = max(1, int((inputs != 0).sum(axis=1).max()))
        yield windows.users[rows], inputs[:, -width:], windows.targets[rows][:, -width:]


def encode_batch(model: TwoTowerModel, mode: str, users, history, targets, device):
    """User vectors and target items of one batch: one row per (history, target) pair.

    The encoder's vectors are checked against the item tower's: a wrong shape
    or dtype would otherwise fail deep in the loss, or not at all.
    """
    user_ids = torch.as_tensor(users, device=device)
    history = torch.as_tensor(history, device=device)
    mask = history != 0
    targets = torch.as_tensor(targets, device=device)
    if mode == "prefix":
        with model.encoder_failures("in a training step"):
            vectors = model.encode_users(user_ids, history, mask)
        model.check_user_vectors(vectors, user_ids.shape)
        return user_ids, history, mask, vectors, targets
    with model.encoder_failures("in encode_sequence, in a training step"):
        vectors = model.user_tower.encode_sequence(user_ids, history, mask)  # [B, L, d]
    model.check_user_vectors(vectors, history.shape, "encode_sequence")
    owned = targets != 0  # [B, L]
    rows = user_ids.unsqueeze(1).expand_as(targets)[owned]  # [M]
    return rows, history, mask, vectors[owned], targets[owned]  # [M, d], [M]


def check_loss_value(loss: object, source: str) -> torch.Tensor:
    """A loss plugin's value is a float scalar tensor that gradients flow back from
    (``source`` names the loss in the error)."""
    if not isinstance(loss, torch.Tensor):
        raise TwoTowerError(f"{source} returned a {type(loss).__name__}, not a tensor")
    if loss.dim() != 0 or not loss.is_floating_point():
        raise TwoTowerError(
            f"{source} returned a {loss.dtype} tensor of shape {list(loss.shape)}, "
            "not a float scalar"
        )
    if not loss.requires_grad:
        raise TwoTowerError(
            f"{source} returned a value without gradients (detached, or computed under "
            "torch.no_grad): training cannot step on it"
        )
    return loss


class TrainStep(nn.Module):
    """The loss of one batch as a module call: the unit DistributedDataParallel wraps.

    DDP reduces the gradients of what the forward of the module it wraps
    computed, so the whole step (both towers, the loss plugin, and the
    catalog a full-catalog loss encodes) happens in this forward. Across
    ranks the loss is weighed by the rank's share of the batch, so the
    averaged gradients are those of the mean over every rank's rows.
    """

    def __init__(
        self,
        model: TwoTowerModel,
        loss_fn,
        mode: str,
        earlier: EarlierItems,
        context,
        loss_name: str,
    ):
        super().__init__()
        self.model = model
        self.loss_fn, self.mode, self.earlier, self.context = loss_fn, mode, earlier, context
        self.loss_name = loss_name  # for errors about what the loss returns

    def forward(self, users, history, targets) -> torch.Tensor:
        model, device = self.model, self.model.log_temperature.device
        user_ids, history, mask, user_vecs, targets = encode_batch(
            model, self.mode, users, history, targets, device
        )
        shards = distributed.shards(len(targets), self.context)
        batch = TrainBatch(
            user_ids,
            history,
            mask,
            targets,
            model.encode_items,
            model.num_items,
            earlier_items_of(self.earlier, user_ids, targets),
            shards,
        )
        item_vecs = model.encode_items(targets)
        # a collective that failed because a peer stopped is worded by distributed.session
        failed = f"loss {self.loss_name!r} failed in a training step"
        with refused_as(failed, passes=distributed.lost_peer):
            loss = self.loss_fn(user_vecs, item_vecs, model.temperature, batch)
        loss = check_loss_value(loss, f"loss {self.loss_name!r}")
        return loss if shards is None else loss * shards.share


def weight_average(model: TwoTowerModel, decay: float) -> AveragedModel | None:
    """An exponential moving average of the weights (None when ``decay`` is 0).

    Validation, early stopping and the kept model use the average: it moves
    less from step to step than the raw weights, so the validation curve is
    smoother and the epoch it picks is less of a lucky draw.
    """
    if not decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def learning_rate_schedule(
    optimizer: torch.optim.Optimizer, config, epoch_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-step schedule of ``config.lr_schedule`` (None for a constant rate).

    ``cosine`` decays the rate from ``lr`` to 0 along half a cosine that ends
    with epoch ``epochs``: the late, small steps settle the weights where a
    constant rate keeps them moving, so fewer epochs reach a better model.
    """
    if config.lr_schedule == "constant":
        return None
    total = max(1, config.epochs * epoch_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    )


def earlier_items_of(earlier: EarlierItems, users: torch.Tensor, targets: torch.Tensor):
    """``TrainBatch.earlier_items`` of one batch: worked out only if the loss asks."""
    return lambda: earlier.before(users.cpu().numpy(), targets.cpu().numpy())


def parameters_without_gradient(model: nn.Module) -> list[str]:
    """The trainable parameters the last backward pass gave no gradient."""
    return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


def refuse_unused_parameters(model: nn.Module) -> None:
    """DistributedDataParallel waits for every parameter's gradient in every step: one
    left out fails the next step deep inside torch, so it is refused here, by name."""
    unused = parameters_without_gradient(model)
    if unused:
        raise TwoTowerError(
            "under torchrun every parameter must take part in every step, but "
            f"{', '.join(unused)} got no gradient; train in one process, or use every "
            "parameter the encoder (or the loss) owns"
        )


def stop_if_diverged(epoch: int, step: int, loss: float, grad_norm: float, lr: float) -> None:
    """A NaN or infinite loss or gradient ends the run: a diverged model is never scored."""
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        raise TwoTowerError(
            f"training diverged at epoch {epoch}, step {step} (loss {loss}, gradient norm "
            f"{grad_norm}); try a lower --lr than {lr:g}"
        )


@dataclass
class Training:
    """A model set up to train on a split: its data, batches, step and optimizer."""

    model: TwoTowerModel
    step: nn.Module  # TrainStep, under DistributedDataParallel on a group
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler | None
    averaged: AveragedModel | None
    data: Examples | Windows
    batches: Callable  # (data, batch_size, generator, context) -> batches of arrays
    batch_size: int  # per rank
    examples: int  # training pairs in ``data``
    context: Context

    @property
    def trained(self) -> nn.Module:
        """Everything a step trains: the towers, and a loss's own parameters if it has any
        (a loss that is an ``nn.Module``). A loss's parameters serve training only: the
        kept model, and so the artifacts and bundles, are the towers alone."""
        return getattr(self.step, "module", self.step)  # TrainStep, unwrapped

    @property
    def scored(self) -> TwoTowerModel:
        """What validation sees: the weight average when there is one."""
        return self.averaged.module if self.averaged is not None else self.model


def start_training(config, split: Split, context: Context = SINGLE) -> Training:
    """Seeded model, data, loss, optimizer and step of ``config`` on ``split``."""
    seed_everything(config.seed, config.num_threads)
    device = context.training_device(config.device)
    model = build_model(config, split).to(device)
    if context.rank:
        torch.manual_seed(config.seed + context.rank)  # each rank its own dropout masks
    mode = resolve_train_mode(config, model)
    if mode == "prefix":
        data = training_examples(split, config.max_history_len)
        batches, examples, batch_size = prefix_batches, len(data), config.batch_size
    else:
        data = training_windows(split, config.max_history_len)
        batches, examples = window_batches, int((data.targets != 0).sum())
        batch_size = config.sequence_batch_size
    # item counts come from the whole split, which every rank holds: logQ is global
    make_loss = plugins.losses().get(config.loss)
    with refused_as(f"loss {config.loss!r} could not be made"):
        loss_fn = make_loss(config, item_counts(split, split.num_items))
    train_step = TrainStep(model, loss_fn, mode, split.earlier_items, context, config.loss)
    train_step.to(device)  # a loss's own parameters go where the towers are
    step = distributed.wrap(train_step, context)
    # the fused kernel updates every parameter in one call instead of a dozen per tensor
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(  # the towers' parameters, then the loss's own if any
        train_step.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=fused
    )
    schedule = learning_rate_schedule(
        optimizer, config, steps_per_epoch(len(data), batch_size, context)
    )
    averaged = weight_average(model, config.ema_decay)
    return Training(
        model, step, optimizer, schedule, averaged, data, batches, batch_size, examples, context
    )


def steps_per_epoch(rows: int, batch_size: int, context: Context) -> int:
    """Optimizer steps in one pass over ``rows`` training rows, batch ``batch_size`` per rank."""
    return -(-rows // (batch_size * context.world_size))


@dataclass
class EpochStats:
    loss: float  # mean over the steps of the whole batch's loss
    steps: int
    examples: int  # training pairs, over every rank


def train_epoch(
    training: Training,
    config,
    epoch: int,
    generator: torch.Generator,
    on_step: Callable[[int, int, float], None] | None = None,
    max_steps: int | None = None,
) -> EpochStats:
    """One pass over the data, or its first ``max_steps`` batches.

    The loss reported, and checked for divergence, is the whole batch's: on
    every rank the same number.
    """
    model, context = training.model, training.context
    model.train()
    steps = steps_per_epoch(len(training.data), training.batch_size, context)
    if max_steps is not None:
        steps = min(steps, max_steps)
    total_loss, done, examples = 0.0, 0, 0
    batches = training.batches(training.data, training.batch_size, generator, context)
    for step, arrays in enumerate(batches, start=1):
        examples += int(np.count_nonzero(arrays[-1]))  # targets; 0 where a window has none
        loss = training.step(*arrays)
        training.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if step == 1 and context.distributed:  # every rank decides together
            distributed.together(lambda: refuse_unused_parameters(training.trained), context)
        grad_norm = torch.nn.utils.clip_grad_norm_(training.trained.parameters(), 5.0)
        value = distributed.mean(loss.item(), context)
        stop_if_diverged(epoch, step, value, grad_norm.item(), config.lr)
        training.optimizer.step()
        if training.schedule is not None:
            training.schedule.step()
        if training.averaged is not None:
            training.averaged.update_parameters(model)
        total_loss, done = total_loss + value, step
        if on_step is not None:
            on_step(step, steps, total_loss / step)
        if step == max_steps:
            break
    examples = round(distributed.mean(examples, context) * context.world_size)
    return EpochStats(total_loss / max(done, 1), done, examples)


def train(
    config,
    split: Split,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    context: Context = SINGLE,
) -> TrainResult:
    """Train on ``split`` and return the best-validation model with its log.

    ``on_step(done, total, loss)`` and ``on_epoch(entry)`` let a caller draw
    progress; ``entry`` is the epoch's ``train_log.jsonl`` object. On a group
    every rank returns the same result.
    """
    training = start_training(config, split, context)
    model, scored = training.model, training.scored
    generator = torch.Generator().manual_seed(config.seed)

    best: dict[str, Any] = {"score": -1.0, "epoch": 0, "state": None, "valid": {}}
    log: list[dict[str, Any]] = []
    headline = f"recall@{config.k_eval}"
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        loss = train_epoch(training, config, epoch, generator, on_step).loss
        seconds = time.perf_counter() - started
        try:
            valid = evaluate_model(scored, split, "valid", config, context)
        except NonFiniteScores as exc:
            raise TwoTowerError(f"training diverged at epoch {epoch}: {exc}") from None
        entry = {
            "epoch": epoch,
            "loss": loss,
            "valid": valid,
            "seconds": seconds,
            "examples_per_second": training.examples / seconds,
            "temperature": model.temperature.item(),
        }
        log.append(entry)
        improved = valid[headline] > best["score"]
        stop = epoch - (epoch if improved else best["epoch"]) >= config.patience
        improved, stop = distributed.decide([improved, stop], context)
        if improved:
            best = {"score": valid[headline], "epoch": epoch, "valid": valid}
            best["state"] = copy.deepcopy(scored.state_dict())
        if on_epoch is not None:
            on_epoch(entry)
        if stop:
            break
    model.load_state_dict(best["state"])
    model.eval()
    return TrainResult(model, best["epoch"], best["valid"], log)
