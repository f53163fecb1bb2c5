"""Optional pre-training: many-way classification of the base classes before episodic training
(the pre-training stage of FEAT, Ye et al. 2020, and Meta-Baseline, Chen et al. 2021)."""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from cmkd import distributed
from cmkd.config import Config
from cmkd.data.device import DeviceData
from cmkd.models import inputs
from cmkd.models.fewshot import FewShotModel
from cmkd.runtime import seed_for
from cmkd.train.forward import ClassifierForward, data_parallel
from cmkd.train.optim import cosine, optimizer_step, set_lr


def pretrain(model: FewShotModel, data: DeviceData, cfg: Config, precision: str, scaler: torch.amp.GradScaler,
             ranks: distributed.Ranks, progress: bool = True) -> list[float]:
    """Train ``model`` with a linear classifier on its embedding over all base classes for
    ``cfg.train.pretrain_epochs`` epochs (SGD, cosine schedule); returns the mean loss per epoch."""
    t, device = cfg.train, data.device
    base = torch.as_tensor(data.dataset.split_indices("base"), device=device)
    classes = data.dataset.split_classes("base")
    remap = torch.full((data.dataset.num_classes,), -1, dtype=torch.long, device=device)
    remap[torch.as_tensor(classes, device=device)] = torch.arange(len(classes), device=device)
    classifier = torch.nn.Linear(model.out_dim, len(classes)).to(device)
    forward = data_parallel(ClassifierForward(model, classifier, precision, device), device, ranks.world)
    opt = torch.optim.SGD([*model.parameters(), *classifier.parameters()], lr=t.pretrain_lr, momentum=0.9,
                          weight_decay=5e-4, nesterov=True)
    batches = math.ceil(len(base) / t.pretrain_batch)
    total = t.pretrain_epochs * batches
    losses = []
    model.train()
    bar = tqdm(total=total, desc="pre-train", disable=not progress, unit="batch", leave=False)
    for epoch in range(t.pretrain_epochs):
        gen = torch.Generator(device=device).manual_seed(seed_for(t.seed, "pretrain", epoch))
        order = base[torch.randperm(len(base), generator=gen, device=device)]
        running = torch.zeros(())
        for b in range(batches):
            set_lr(opt, t.pretrain_lr * cosine(epoch * batches + b, total))
            idx = order[b * t.pretrain_batch:(b + 1) * t.pretrain_batch]
            idx = idx[distributed.shard(len(idx), ranks)]  # each rank its share of the batch
            images = data.images_for(idx, cfg.data.augment, gen, cfg.data.hflip) if model.uses_image else None
            caps = inputs.pick_captions(data, model, idx, gen) if model.uses_text else None
            logits = forward(images, inputs.text_inputs(data, model, idx, caps)[0])
            loss = torch.nn.functional.cross_entropy(logits, remap[data.labels[idx]])
            optimizer_step(loss, opt, scaler)
            running += loss.detach()
            bar.update(1)
        losses.append(float(running) / batches)
    bar.close()
    return losses
