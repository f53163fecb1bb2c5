"""The one episodic loop: teacher training, plain student training and distillation.

Distillation only adds a frozen teacher forward and the SRL term (Zhao et al., ICASSP
2021): ``L = CE(student episode) + lambda * SRL(student, teacher)``.

All randomness of step ``t`` is derived from ``(seed, t)``: the episodes, augmentation,
caption choice and dropout. A run resumed from its last checkpoint therefore follows
the same stream and ends with the same weights as an uninterrupted one. Under ``torchrun``
rank ``r`` of ``W`` takes slot ``t * W + r`` of that stream, so ranks draw different
episodes and DistributedDataParallel averages their gradients.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cmkd import distributed
from cmkd.config import Config, ConfigError, EpisodeConfig, ModelConfig, build_section, resume_conflicts
from cmkd.data.dataset import FewShotDataset
from cmkd.data.device import DeviceData
from cmkd.data.episodes import EpisodeSampler, episode_labels
from cmkd.data.text import Vocab
from cmkd.eval.evaluate import Embedded, embed_samples, episode_list, evaluate_episodes
from cmkd.eval.stats import mean_ci
from cmkd.losses.baselines import distill_weights
from cmkd.losses.srl import spatial_relation_loss
from cmkd.models.fewshot import FewShotModel
from cmkd.runtime import configure_cpu, provenance
from cmkd.train.checkpoint import (
    CheckpointError,
    RunDirectory,
    load_checkpoint,
    load_latest_good,
    model_state,
    save_checkpoint,
    state_digest,
    unflatten_optimizer,
)
from cmkd.train.forward import ClassifierForward, EpisodeForward, autocast, data_parallel, resolve_precision


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
    tensors, meta, used = load_latest_good(path)
    model = model_from_checkpoint(tensors, meta, used)
    meta = {**meta, "loaded_from": str(used)}  # differs from the path asked for when it fell back to .prev
    model = model.to(device)
    if meta.get("config", {}).get("train", {}).get("channels_last", False):
        model = model.to(memory_format=torch.channels_last)
    return model.eval(), meta


def model_from_checkpoint(tensors: dict[str, torch.Tensor], meta: dict, path: Path) -> FewShotModel:
    """The model a checkpoint describes, after checking its ``spec`` field by field and against the
    stored tensor shapes (on the meta device, so an absurd spec costs no memory)."""
    spec = meta.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
        raise CheckpointError(f"{path}: field 'spec' must hold the model description; the file is damaged")
    for key, low, high in (("in_channels", 1, 4), ("image_size", 8, 4096)):
        value = spec.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise CheckpointError(f"{path}: field 'spec.{key}' must be a whole number from {low} to {high}, got "
                                  f"{value!r}; the file is damaged")
    vocab = spec.get("vocab")
    if vocab is not None and not (isinstance(vocab, dict) and isinstance(vocab.get("words"), list)
                                  and all(isinstance(w, str) for w in vocab["words"])):
        raise CheckpointError(f"{path}: field 'spec.vocab' must be {{'words': [text, ...]}}; the file is damaged")
    try:
        model_cfg = build_section(ModelConfig, spec["model"], "spec.model.")
        spec = {**spec, "model": dataclasses.asdict(model_cfg)}
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in FewShotModel.from_spec(spec).state_dict().items()}
    except (ConfigError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its 'spec' does not describe a model ({err}); the file is damaged") from None
    stored = {k: tuple(v.shape) for k, v in model_state(tensors).items()}
    if stored != shapes:
        diff = sorted(set(stored.items()) ^ set(shapes.items()))[:3]
        raise CheckpointError(f"{path}: its 'spec' does not match its weights (first differences: {diff}); the file "
                              "is damaged or was edited")
    model = FewShotModel.from_spec(spec)
    model.load_state_dict(model_state(tensors))
    return model


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
        self.ranks = distributed.ranks()
        self.data = DeviceData(dataset, self.device, cfg.data.placement)
        self.precision = resolve_precision(cfg.train.precision, self.device)
        torch.manual_seed(cfg.train.seed)  # the initial weights are part of the seeded run
        self.model = (init or build_model(cfg, dataset)).to(self.device)
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        e = cfg.episode
        self.forward: torch.nn.Module = data_parallel(
            EpisodeForward(self.model, e.way, e.shot, self.precision, self.device), self.device, self.ranks.world)
        if cfg.train.compile:
            self.forward = torch.compile(self.forward)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.teacher = teacher.to(self.device).eval() if teacher is not None else None
        if self.teacher is not None:
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.weights = distill_weights(cfg.distill) if teacher is not None else None
        self.teacher_digest = state_digest(teacher) if teacher is not None else None
        self.teacher_cache = None
        if self.teacher is not None and cfg.distill.teacher_inputs == "clean":
            # deterministic teacher inputs: its embeddings of the base split are computed once
            self.teacher_cache = teacher_cache or self.embed_teacher(self.teacher, self.data, cfg)
        ds = dataset
        modes = (False, True) if cfg.train.fine_grained_share > 0 else (False,)  # random, then fine-grained
        self.samplers = [EpisodeSampler(ds.labels, ds.split_classes("base"), e.way, e.shot, e.query, ds.groups,
                                        fine, ds.class_names, "base") for fine in modes]
        self.val_setting = EpisodeConfig(e.way, e.shot, cfg.train.val_query, False)
        self.val_episodes = episode_list(self.data, "val", self.val_setting, cfg.train.val_episodes,
                                         cfg.train.seed + 7919)
        self.optimizer = _optimizer(cfg, self.model)
        self.steps = math.ceil(cfg.train.episodes / (cfg.train.episodes_per_step * self.ranks.world))
        self.step = 0
        self.history: list[dict] = []
        self.pretrain_losses: list[float] = []
        self.recovered: list[str] = []  # damaged checkpoints met on resume, and what was done
        self.best_acc = -1.0
        self.run_dir = cfg.run_dir
        self.dataset_summary = dataset.summary()  # stored in every checkpoint; computed once

    @staticmethod
    def embed_teacher(teacher: FewShotModel, data: DeviceData, cfg: Config) -> Embedded:
        """The teacher's clean embeddings of every base sample (shareable by several students)."""
        return embed_samples(teacher, data, data.dataset.split_indices("base"),
                             all_captions=cfg.data.eval_captions == "mean",
                             precision=resolve_precision(cfg.train.precision, data.device))

    # -- one step ---------------------------------------------------------------------------
    def _slot(self, step: int) -> int:
        """Where this rank's draws of ``step`` sit in the seeded stream (``step`` for one process)."""
        return step * self.ranks.world + self.ranks.rank

    def _episode_indices(self, step: int) -> np.ndarray:
        cfg = self.cfg.train
        slot = self._slot(step)
        rng = np.random.default_rng([cfg.seed, slot, 1])
        sampler = self.samplers[1] if len(self.samplers) > 1 and rng.random() < cfg.fine_grained_share \
            else self.samplers[0]
        e = cfg.episodes_per_step
        return sampler.batch(cfg.seed, slot * e, e)

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        """One optimizer step on this rank's episodes of ``step``; returns detached 0-d loss tensors
        (kept on the device: reading them would wait for the step to finish)."""
        cfg, e = self.cfg, self.cfg.episode
        seed = cfg.train.seed * 1_000_003 + self._slot(step)
        torch.manual_seed(seed)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        episodes = self._episode_indices(step)
        n_ep, n = episodes.shape
        flat = self.data.upload(episodes.reshape(-1))
        live_teacher = self.teacher if self.teacher_cache is None else None
        images = self.data.images_for(flat if self.data.host is None else episodes.reshape(-1), cfg.data.augment,
                                      gen, cfg.data.hflip) if (
            self.model.uses_image or (live_teacher is not None and live_teacher.uses_image)) else None
        if images is not None and self.data.host is not None and step + 1 < self.steps:
            self.data.prefetch(self._episode_indices(step + 1).reshape(-1))  # gathered while this step runs
        text_model = self.model if self.model.uses_text else live_teacher
        caption_ids = (self.data.pick_captions(text_model, flat, gen)
                       if text_model is not None and text_model.uses_text else None)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.train.lr * _lr_factor(cfg, step, self.steps)

        self.model.train()
        text = self.data.text_inputs(self.model, flat, caption_ids)[0]
        emb, scores, ce = self.forward(images if self.model.uses_image else None, text, n_ep)
        loss, logs = ce, {"ce": ce.detach()}
        if self.teacher is not None and self.weights is not None:
            with torch.no_grad():
                if self.teacher_cache is not None:
                    t_emb = self.teacher_cache.rows(episodes)
                else:
                    with autocast(self.precision, self.device):
                        t_emb = self.data.embed(self.teacher, flat, images, caption_ids)
                    t_emb = t_emb.float().view(n_ep, n, -1)
                t_scores = self.teacher.scores(t_emb, e.way, e.shot)
            truth = episode_labels(e.way, e.query, self.device).expand(n_ep, -1)
            s_emb, s_scores = emb, scores
            if cfg.distill.student_inputs == "clean":  # the student's relations on the inputs the teacher saw
                c_images = self.data.images_for(flat) if self.model.uses_image else None
                c_text, c_mask = self.data.text_inputs(self.model, flat, all_captions=True)
                s_emb, s_scores, _ = self.forward(c_images, c_text, n_ep, c_mask)
            terms = spatial_relation_loss(s_scores, t_scores, s_emb, t_emb, self.weights, truth)
            ramp = min(1.0, step / (cfg.distill.warmup * self.steps)) if cfg.distill.warmup > 0 else 1.0
            loss = ce + ramp * cfg.distill.weight * terms["srl"]
            logs.update({k: v.detach() for k, v in terms.items()})
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        truth = episode_labels(e.way, e.query, self.device)
        logs["loss"] = loss.detach()
        logs["acc"] = (scores.detach().argmax(-1) == truth).float().mean()
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
        forward = data_parallel(ClassifierForward(self.model, classifier, self.precision, self.device),
                                self.device, self.ranks.world)
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
                idx = idx[distributed.shard(len(idx), self.ranks)]  # each rank its share of the batch
                images = self.data.images_for(idx, cfg.data.augment, gen, cfg.data.hflip) if self.model.uses_image \
                    else None
                caps = self.data.pick_captions(self.model, idx, gen) if self.model.uses_text else None
                logits = forward(images, self.data.text_inputs(self.model, idx, caps)[0])
                loss = torch.nn.functional.cross_entropy(logits, remap[self.data.labels[idx]])
                opt.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(opt)
                self.scaler.update()
                running += loss.detach()
                bar.update(1)
            losses.append(float(running) / batches)
        bar.close()
        return losses

    # -- validation and checkpoints -----------------------------------------------------------
    def validate(self) -> tuple[float, float]:
        """Accuracy on the fixed val episodes (sharded over the ranks, gathered on all)."""
        distributed.sync_buffers(self.model)
        accs = evaluate_episodes(self.model, self.data, self.val_episodes, self.val_setting.way,
                                 self.val_setting.shot, self.cfg.data.eval_captions == "mean", self.precision)
        m = mean_ci(accs)
        return m.mean, m.ci95

    def _meta(self) -> dict:
        return {"spec": self.model.spec(), "config": self.cfg.to_dict(), "step": self.step,
                "history": self.history, "pretrain_losses": self.pretrain_losses, "best_acc": self.best_acc,
                "dataset": self.dataset_summary, "provenance": provenance(self.device), "world_size": self.ranks.world,
                "precision": self.precision, "grad_scaler": self.scaler.state_dict(),
                "teacher_sha256": self.teacher_digest, "recovered": self.recovered}

    def save(self, best: bool) -> None:
        """Checkpoint (rank 0 writes; every rank holds the same weights)."""
        if self.ranks.main:
            save_checkpoint(self.run_dir / "last", self.model, self._meta(), self.optimizer)
            if best:
                save_checkpoint(self.run_dir / "best", self.model, self._meta())
        distributed.barrier()

    def resume(self) -> bool:
        """Continue from ``run_dir/last`` if it exists; returns whether it did."""
        path = self.run_dir / "last.json"
        if not path.exists() and not (self.run_dir / "last.prev.json").exists():
            return False
        tensors, meta, used = load_latest_good(path)
        if used != path:
            self.recovered.append(f"step {meta['step']}: {path.name} was damaged; resumed from {used.name}")
            tqdm.write(f"{path} is damaged; resuming from the previous checkpoint {used}")
        conflicts = resume_conflicts(meta.get("config", {}), self.cfg.to_dict())
        if meta.get("teacher_sha256") != self.teacher_digest:
            conflicts.append("the teacher's weights differ (distill.teacher names another teacher)")
        if conflicts:
            raise ConfigError(f"--resume: {path} holds a run with another training config; refusing to continue "
                              "it with:\n  " + "\n  ".join(conflicts) +
                              "\nStart a new run name (--name ...), or resume with the run's own settings")
        if meta["spec"] != self.model.spec():
            raise ConfigError(f"{path} was trained with another model or vocabulary; start a new run name "
                              "(name=...) or delete the run directory")
        if meta.get("world_size", 1) != self.ranks.world:
            raise ValueError(f"{path} was trained by {meta.get('world_size', 1)} process(es); resume it with "
                             f"the same number (this is {self.ranks.world}) so it follows the same episodes")
        self.model.load_state_dict(model_state(tensors))
        self.optimizer.load_state_dict(unflatten_optimizer(tensors, meta["optimizer"]))
        if meta.get("grad_scaler"):
            self.scaler.load_state_dict(meta["grad_scaler"])
        self.step, self.history, self.best_acc = meta["step"], meta["history"], meta["best_acc"]
        self.pretrain_losses = meta.get("pretrain_losses", [])
        self.recovered = [*meta.get("recovered", []), *self.recovered]
        self._repair_best()
        return True

    def _repair_best(self) -> None:
        """After a crash ``best.json`` may name damaged weights: fall back to ``best.prev.json`` (and its
        accuracy), or drop it so the next validation writes a new best."""
        best = self.run_dir / "best.json"
        if not best.exists():
            return
        try:
            load_checkpoint(best)
            return
        except CheckpointError:
            pass
        prev = self.run_dir / "best.prev.json"
        try:
            _, prev_meta = load_checkpoint(prev)
            os.replace(prev, best)
            self.best_acc = min(self.best_acc, prev_meta.get("best_acc", -1.0))
            note = f"best.json was damaged; restored best.prev.json (val accuracy {self.best_acc:.4f})"
        except CheckpointError:
            best.unlink()
            self.best_acc = -1.0
            note = "best.json was damaged and best.prev.json unusable; the next validation writes a new best"
        self.recovered.append(f"step {self.step}: {note}")
        tqdm.write(f"{self.run_dir}: {note}")

    def _read_logs(self, pending: list[tuple[int, dict[str, torch.Tensor]]]) -> list[dict[str, float]]:
        """Step logs as numbers (one device sync for many steps); stops on a non-finite loss."""
        if not pending:
            return []
        keys = list(pending[0][1])
        values = torch.stack([torch.stack([logs[k] for k in keys]) for _, logs in pending]).cpu().tolist()
        for (step, _), row in zip(pending, values):
            if not math.isfinite(row[keys.index("loss")]):
                last = self.run_dir / "last.json"
                kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
                raise TrainingDiverged(f"loss became {row[keys.index('loss')]} at step {step} (episode "
                                       f"{step * self.cfg.train.episodes_per_step * self.ranks.world}); {kept}; "
                                       "lower train.lr and resume")
        return [dict(zip(keys, row)) for row in values]

    # -- the loop -------------------------------------------------------------------------------
    def fit(self, resume: bool = False, progress: bool = True, desc: str | None = None,
            read_every: int = 20, overwrite: bool = False) -> list[dict]:
        """Train to the end (or resume), validating and checkpointing every ``train.val_every`` episodes.

        The run folder is locked while training. A folder that already holds a run is refused
        unless ``resume`` (continue it) or ``overwrite`` (replace it). Losses stay on the device
        and are read every ``read_every`` steps, so a GPU is never stalled waiting for a number;
        a non-finite loss stops the run before anything is saved.
        """
        folder = RunDirectory(self.run_dir)
        if self.ranks.main:
            folder.acquire()
        try:
            if self.ranks.main:
                folder.check(resume, overwrite)
            return self._fit(folder, resume, overwrite, progress, desc, read_every)
        finally:
            folder.release()

    def _fit(self, folder: RunDirectory, resume: bool, overwrite: bool, progress: bool, desc: str | None,
             read_every: int) -> list[dict]:
        cfg = self.cfg
        configure_cpu(cfg.train.threads)
        progress = progress and self.ranks.main
        resumed = resume and self.resume()  # checked before anything in the run directory is written
        if self.ranks.main:
            if overwrite and not resumed:
                folder.clear()
            (self.run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        if resumed:
            if self.ranks.main:
                tqdm.write(f"resumed {self.run_dir} at step {self.step}/{self.steps}")
        elif cfg.train.pretrain_epochs > 0:
            self.pretrain_losses = self.pretrain(progress)
            self.save(best=False)  # a kill during episodic training resumes after pre-training
        val_steps = max(1, cfg.train.val_every // (cfg.train.episodes_per_step * self.ranks.world))
        bar = tqdm(total=self.steps, initial=self.step, desc=desc or cfg.name, disable=not progress,
                   unit="step", dynamic_ncols=True, leave=True)
        running: dict[str, float] = {}
        pending: list[tuple[int, dict[str, torch.Tensor]]] = []
        start = time.perf_counter()
        while self.step < self.steps:
            pending.append((self.step, self.train_step(self.step)))
            self.step += 1
            bar.update(1)
            validate = self.step % val_steps == 0 or self.step == self.steps
            if validate or len(pending) >= read_every:
                for logs in self._read_logs(pending):
                    for k, v in logs.items():
                        running[k] = 0.9 * running.get(k, v) + 0.1 * v
                pending = []
            if validate:
                acc, ci = self.validate()
                improved = acc > self.best_acc
                self.best_acc = max(self.best_acc, acc)
                self.history.append({"step": self.step,
                                     "episodes": self.step * cfg.train.episodes_per_step * self.ranks.world,
                                     **{k: round(v, 5) for k, v in running.items()},
                                     "val_acc": acc, "val_ci95": ci,
                                     "seconds": round(time.perf_counter() - start, 2)})
                self.save(best=improved)
                bar.set_postfix(loss=f"{running['loss']:.3f}", val=f"{100 * acc:.1f}",
                                best=f"{100 * self.best_acc:.1f}")
        bar.close()
        return self.history
