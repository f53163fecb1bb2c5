"""The one episodic loop: teacher training, plain student training and distillation.

Distillation only adds a frozen teacher forward and the SRL term (Zhao et al., ICASSP
2021): ``L = CE(student episode) + lambda * SRL(student, teacher)``.

All randomness of step ``t`` is derived from ``(seed, t)``: the episodes, augmentation,
caption choice and dropout. A run resumed from its last checkpoint therefore follows
the same stream and ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cmkd.config import Config, EpisodeConfig
from cmkd.data.dataset import FewShotDataset
from cmkd.data.device import DeviceData
from cmkd.data.episodes import EpisodeSampler, episode_labels
from cmkd.data.text import Vocab
from cmkd.eval.evaluate import Embedded, embed_samples, episode_list, evaluate_episodes
from cmkd.eval.stats import mean_ci
from cmkd.losses.baselines import distill_weights
from cmkd.losses.srl import spatial_relation_loss
from cmkd.models.fewshot import FewShotModel
from cmkd.runtime import configure_cpu, git_commit
from cmkd.train.checkpoint import (
    CheckpointError,
    load_latest_good,
    model_state,
    save_checkpoint,
    unflatten_optimizer,
)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def build_model(cfg: Config, dataset: FewShotDataset) -> FewShotModel:
    """A fresh model for ``cfg.model``; text vocabularies come from base-split captions only."""
    vocab = None
    if "text" in cfg.model.modality and cfg.model.text_encoder in ("bow", "bigru"):
        base = set(dataset.split_classes("base"))
        labels = dataset.labels.tolist()
        vocab = Vocab.build(c for i, caps in enumerate(dataset.captions) if labels[i] in base for c in caps)
    c, h, _ = dataset.image_shape
    return FewShotModel(cfg.model, c, h, vocab)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[FewShotModel, dict]:
    """A model from a checkpoint (``best``/``last`` file or a run directory), in eval mode."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.json"
    elif path.suffix != ".json":
        raise CheckpointError(f"{path} is neither a run directory nor a checkpoint .json file")
    tensors, meta, _ = load_latest_good(path)
    model = FewShotModel.from_spec(meta["spec"])
    model.load_state_dict(model_state(tensors))
    model = model.to(device)
    if meta.get("config", {}).get("train", {}).get("channels_last", False):
        model = model.to(memory_format=torch.channels_last)
    return model.eval(), meta


def _optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.train.lr, momentum=0.9, weight_decay=cfg.train.weight_decay,
                               nesterov=True)
    return torch.optim.Adam(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)


def _lr_factor(cfg: Config, step: int, total: int) -> float:
    if cfg.train.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))
    if cfg.train.schedule == "step":
        return cfg.train.gamma ** (step * cfg.train.episodes_per_step // cfg.train.step_size)
    return 1.0


class Trainer:
    """Trains ``cfg``'s model on the base split, validating on fixed val episodes."""

    def __init__(self, cfg: Config, dataset: FewShotDataset, device: torch.device | str = "cpu",
                 teacher: FewShotModel | None = None, init: FewShotModel | None = None,
                 teacher_cache: Embedded | None = None) -> None:
        self.cfg, self.dataset = cfg, dataset
        self.device = torch.device(device)
        self.data = DeviceData(dataset, self.device)
        torch.manual_seed(cfg.train.seed)  # the initial weights are part of the seeded run
        self.model = (init or build_model(cfg, dataset)).to(self.device)
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.teacher = teacher.to(self.device).eval() if teacher is not None else None
        if self.teacher is not None:
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.weights = distill_weights(cfg.distill) if teacher is not None else None
        self.teacher_cache = None
        if self.teacher is not None and cfg.distill.teacher_inputs == "clean":
            # deterministic teacher inputs: its embeddings of the base split are computed once
            self.teacher_cache = teacher_cache or self.embed_teacher(self.teacher, self.data, cfg)
        e = cfg.episode
        ds = dataset
        modes = (False, True) if cfg.train.fine_grained_share > 0 else (False,)  # random, then fine-grained
        self.samplers = [EpisodeSampler(ds.labels, ds.split_classes("base"), e.way, e.shot, e.query, ds.groups,
                                        fine, ds.class_names, "base") for fine in modes]
        self.val_setting = EpisodeConfig(e.way, e.shot, cfg.train.val_query, False)
        self.val_episodes = episode_list(self.data, "val", self.val_setting, cfg.train.val_episodes,
                                         cfg.train.seed + 7919)
        self.optimizer = _optimizer(cfg, self.model)
        self.steps = math.ceil(cfg.train.episodes / cfg.train.episodes_per_step)
        self.step = 0
        self.history: list[dict] = []
        self.pretrain_losses: list[float] = []
        self.best_acc = -1.0
        self.run_dir = cfg.run_dir
        self.dataset_summary = dataset.summary()  # stored in every checkpoint; computed once

    @staticmethod
    def embed_teacher(teacher: FewShotModel, data: DeviceData, cfg: Config) -> Embedded:
        """The teacher's clean embeddings of every base sample (shareable by several students)."""
        return embed_samples(teacher, data, data.dataset.split_indices("base"),
                             all_captions=cfg.data.eval_captions == "mean")

    # -- one step ---------------------------------------------------------------------------
    def _episode_indices(self, step: int) -> np.ndarray:
        cfg = self.cfg.train
        rng = np.random.default_rng([cfg.seed, step, 1])
        sampler = self.samplers[1] if len(self.samplers) > 1 and rng.random() < cfg.fine_grained_share \
            else self.samplers[0]
        e = cfg.episodes_per_step
        return sampler.batch(cfg.seed, step * e, e)

    def train_step(self, step: int) -> dict[str, float]:
        cfg, e = self.cfg, self.cfg.episode
        torch.manual_seed(cfg.train.seed * 1_000_003 + step)
        gen = torch.Generator(device=self.device).manual_seed(cfg.train.seed * 1_000_003 + step)
        episodes = self._episode_indices(step)
        idx = torch.as_tensor(episodes, device=self.device)
        n_ep, n = idx.shape
        flat = idx.flatten()
        live_teacher = self.teacher if self.teacher_cache is None else None
        images = self.data.images_for(flat, cfg.data.augment, gen, cfg.data.hflip) if (
            self.model.uses_image or (live_teacher is not None and live_teacher.uses_image)) else None
        text_model = self.model if self.model.uses_text else live_teacher
        caption_ids = (self.data.pick_captions(text_model, flat, gen)
                       if text_model is not None and text_model.uses_text else None)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.train.lr * _lr_factor(cfg, step, self.steps)

        self.model.train()
        emb = self.data.embed(self.model, flat, images, caption_ids).view(n_ep, n, -1)
        scores = self.model.scores(emb, e.way, e.shot)
        truth = episode_labels(e.way, e.query, self.device).expand(n_ep, -1)
        ce = self.model.loss(scores, emb, e.way, e.shot)  # the head's own loss (CE for most)
        loss, logs = ce, {"ce": ce.item()}
        if self.teacher is not None and self.weights is not None:
            with torch.no_grad():
                if self.teacher_cache is not None:
                    t_emb = self.teacher_cache.rows(episodes)
                else:
                    t_emb = self.data.embed(self.teacher, flat, images, caption_ids).view(n_ep, n, -1)
                t_scores = self.teacher.scores(t_emb, e.way, e.shot)
            terms = spatial_relation_loss(scores, t_scores, emb, t_emb, self.weights)
            loss = ce + cfg.distill.weight * terms["srl"]
            logs.update({k: v.item() for k, v in terms.items()})
        if not torch.isfinite(loss):
            last = self.run_dir / "last.json"
            kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
            raise TrainingDiverged(f"loss became {loss.item()} at step {step} (episode "
                                   f"{step * cfg.train.episodes_per_step}); {kept}; lower train.lr and resume")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        logs["loss"] = loss.item()
        logs["acc"] = (scores.argmax(-1) == truth).float().mean().item()
        return logs

    # -- optional pre-training --------------------------------------------------------------
    def pretrain(self, progress: bool = True) -> list[float]:
        """Many-way classification of the base classes with a linear layer on the embedding
        (the pre-training stage of FEAT and Meta-Baseline); returns the mean loss per epoch."""
        cfg = self.cfg
        base = torch.as_tensor(self.dataset.split_indices("base"), device=self.device)
        classes = self.dataset.split_classes("base")
        remap = torch.full((self.dataset.num_classes,), -1, dtype=torch.long, device=self.device)
        remap[torch.as_tensor(classes, device=self.device)] = torch.arange(len(classes), device=self.device)
        classifier = torch.nn.Linear(self.model.out_dim, len(classes)).to(self.device)
        params = [*self.model.parameters(), *classifier.parameters()]
        opt = torch.optim.SGD(params, lr=cfg.train.pretrain_lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
        batches = math.ceil(len(base) / cfg.train.pretrain_batch)
        total = cfg.train.pretrain_epochs * batches
        losses = []
        self.model.train()
        bar = tqdm(total=total, desc="pre-train", disable=not progress, unit="batch", leave=False)
        for epoch in range(cfg.train.pretrain_epochs):
            gen = torch.Generator(device=self.device).manual_seed(cfg.train.seed * 7919 + epoch)
            order = base[torch.randperm(len(base), generator=gen, device=self.device)]
            running = 0.0
            for b in range(batches):
                for group in opt.param_groups:
                    group["lr"] = cfg.train.pretrain_lr * 0.5 * (1 + math.cos(math.pi * (epoch * batches + b) / total))
                idx = order[b * cfg.train.pretrain_batch:(b + 1) * cfg.train.pretrain_batch]
                images = self.data.images_for(idx, cfg.data.augment, gen, cfg.data.hflip) if self.model.uses_image \
                    else None
                caps = self.data.pick_captions(self.model, idx, gen) if self.model.uses_text else None
                logits = classifier(self.data.embed(self.model, idx, images, caps))
                loss = torch.nn.functional.cross_entropy(logits, remap[self.data.labels[idx]])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                running += loss.item()
                bar.update(1)
            losses.append(running / batches)
        bar.close()
        return losses

    # -- validation and checkpoints -----------------------------------------------------------
    def validate(self) -> tuple[float, float]:
        accs = evaluate_episodes(self.model, self.data, self.val_episodes, self.val_setting.way,
                                 self.val_setting.shot, self.cfg.data.eval_captions == "mean")
        m = mean_ci(accs)
        return m.mean, m.ci95

    def _meta(self) -> dict:
        return {"spec": self.model.spec(), "config": self.cfg.to_dict(), "step": self.step,
                "history": self.history, "pretrain_losses": self.pretrain_losses, "best_acc": self.best_acc,
                "dataset": self.dataset_summary, "commit": git_commit()}

    def save(self, best: bool) -> None:
        save_checkpoint(self.run_dir / "last", self.model, self._meta(), self.optimizer)
        if best:
            save_checkpoint(self.run_dir / "best", self.model, self._meta())

    def resume(self) -> bool:
        """Continue from ``run_dir/last`` if it exists; returns whether it did."""
        path = self.run_dir / "last.json"
        if not path.exists() and not (self.run_dir / "last.prev.json").exists():
            return False
        tensors, meta, used = load_latest_good(path)
        if used != path:
            tqdm.write(f"{path} is damaged; resuming from the previous checkpoint {used}")
        if meta["spec"] != self.model.spec():
            raise ValueError(f"{path} was trained with another model or vocabulary; start a new run name "
                             "(name=...) or delete the run directory")
        self.model.load_state_dict(model_state(tensors))
        self.optimizer.load_state_dict(unflatten_optimizer(tensors, meta["optimizer"]))
        self.step, self.history, self.best_acc = meta["step"], meta["history"], meta["best_acc"]
        self.pretrain_losses = meta.get("pretrain_losses", [])
        return True

    # -- the loop -------------------------------------------------------------------------------
    def fit(self, resume: bool = False, progress: bool = True, desc: str | None = None) -> list[dict]:
        cfg = self.cfg
        configure_cpu(cfg.train.threads)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        if resume and self.resume():
            tqdm.write(f"resumed {self.run_dir} at step {self.step}/{self.steps}")
        elif cfg.train.pretrain_epochs > 0:
            self.pretrain_losses = self.pretrain(progress)
            self.save(best=False)  # a kill during episodic training resumes after pre-training
        val_steps = max(1, cfg.train.val_every // cfg.train.episodes_per_step)
        bar = tqdm(total=self.steps, initial=self.step, desc=desc or cfg.name, disable=not progress,
                   unit="step", dynamic_ncols=True, leave=True)
        running: dict[str, float] = {}
        start = time.perf_counter()
        while self.step < self.steps:
            logs = self.train_step(self.step)
            self.step += 1
            for k, v in logs.items():
                running[k] = 0.9 * running.get(k, v) + 0.1 * v
            bar.update(1)
            if self.step % val_steps == 0 or self.step == self.steps:
                acc, ci = self.validate()
                improved = acc > self.best_acc
                self.best_acc = max(self.best_acc, acc)
                self.history.append({"step": self.step, "episodes": self.step * cfg.train.episodes_per_step,
                                     **{k: round(v, 5) for k, v in running.items()},
                                     "val_acc": acc, "val_ci95": ci,
                                     "seconds": round(time.perf_counter() - start, 2)})
                self.save(best=improved)
                bar.set_postfix(loss=f"{running['loss']:.3f}", val=f"{100 * acc:.1f}",
                                best=f"{100 * self.best_acc:.1f}")
        bar.close()
        return self.history

