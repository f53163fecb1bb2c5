"""The optimizer, its learning-rate schedule and the backward/step sequence of every training loop."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from cmkd.config import TrainConfig


def build_optimizer(cfg: TrainConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """Adam, or SGD with Nesterov momentum 0.9, at ``cfg.lr`` (trainable parameters only)."""
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def cosine(step: int, total: int) -> float:
    """Cosine decay from 1 at step 0 to 0 at ``total`` (Loshchilov & Hutter 2017, without restarts)."""
    return 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))


def lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    """The multiplier of ``cfg.lr`` at optimizer step ``step`` of ``total``."""
    if cfg.schedule == "cosine":
        return cosine(step, total)
    if cfg.schedule == "step":
        return cfg.gamma ** (step * cfg.episodes_per_step // cfg.step_size)
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """Backward and update (with fp16 loss scaling when the scaler is enabled)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
