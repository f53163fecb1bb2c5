"""The one episodic loop: teacher training, plain student training and distillation.

Distillation only adds a frozen teacher forward and the SRL term (Zhao et al., ICASSP
2021): ``L = CE(student episode) + lambda * SRL(student, teacher)``.

All randomness of step ``t`` is derived from ``(seed, t)`` (:func:`cmkd.runtime.seed_for`): the
episodes, augmentation, caption choice and dropout. A run resumed from its last checkpoint
therefore follows the same stream and ends with the same weights as an uninterrupted one.
Under ``torchrun`` rank ``r`` of ``W`` takes slot ``t * W + r`` of that stream, so ranks draw
different episodes and DistributedDataParallel averages their gradients.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import torch
from tqdm import tqdm

from cmkd import distributed
from cmkd.checkpoint import (
    RunDirectory,
    load_checkpoint,
    load_latest_good,
    model_state,
    repair_best,
    save_checkpoint,
    state_digest,
    unflatten_optimizer,
)
from cmkd.config import Config, ConfigError, EpisodeConfig, resume_conflicts
from cmkd.data.dataset import FewShotDataset
from cmkd.data.device import DeviceData
from cmkd.data.episodes import EpisodeSampler, episode_labels
from cmkd.data.text import Vocab
from cmkd.eval.evaluate import Embedded, embed_samples, episode_list, evaluate_episodes
from cmkd.eval.plots import plot_val_curves
from cmkd.eval.stats import mean_ci
from cmkd.losses.methods import loss_settings
from cmkd.losses.srl import spatial_relation_loss
from cmkd.models import inputs
from cmkd.models.caption_decoder import CaptionDecoder
from cmkd.models.fewshot import FewShotModel, build_model
from cmkd.models.text_encoders import MAX_TOKENS
from cmkd.runtime import autocast, provenance, resolve_precision, seed_for
from cmkd.train.forward import EpisodeForward, data_parallel
from cmkd.train.logs import RunLog
from cmkd.train.optim import build_optimizer, lr_factor, optimizer_step, set_lr
from cmkd.train.pretrain import pretrain


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class Trainer:
    """Trains ``cfg``'s model on the base split, validating on fixed val episodes.

    ``teacher`` (an image+text model) turns training into distillation; ``init`` starts from
    given weights; ``teacher_cache`` shares one teacher pass between several students.
    """

    def __init__(self, cfg: Config, dataset: FewShotDataset, device: torch.device | str = "cpu",
                 teacher: FewShotModel | None = None, init: FewShotModel | None = None,
                 teacher_cache: Embedded | None = None) -> None:
        self.cfg, self.dataset = cfg, dataset
        self.device = torch.device(device)
        self.ranks = distributed.ranks()
        self.data = DeviceData(dataset, self.device, cfg.data.placement)
        self.precision = resolve_precision(cfg.train.precision, self.device)
        torch.manual_seed(cfg.train.seed)  # the initial weights are part of the seeded run
        self.model = (init or build_model(cfg.model, dataset)).to(self.device)
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        e = cfg.episode
        self.decoder = self._caption_decoder() if cfg.lsl.weight > 0 else None
        self.forward: torch.nn.Module = data_parallel(
            EpisodeForward(self.model, e.way, e.shot, self.precision, self.device, self.decoder, cfg.lsl.weight),
            self.device, self.ranks.world)
        if cfg.train.compile:
            self.forward = torch.compile(self.forward)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.teacher = teacher.to(self.device).eval() if teacher is not None else None
        if self.teacher is not None:
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.loss_settings = loss_settings(cfg.distill) if teacher is not None else None
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
                                         seed_for(cfg.train.seed, "validation"))
        self.optimizer = build_optimizer(cfg.train, [*self.model.parameters(),
                                                     *(self.decoder.parameters() if self.decoder else [])])
        self.steps = math.ceil(cfg.train.episodes / (cfg.train.episodes_per_step * self.ranks.world))
        self.step = 0
        self.history: list[dict] = []
        self.pretrain_losses: list[float] = []
        self.recovered: list[str] = []  # damaged checkpoints met on resume, and what was done
        self.best_acc = -1.0
        self.run_dir = cfg.run_dir
        self.dataset_summary = dataset.summary()  # stored in every checkpoint; computed once

    def _caption_decoder(self) -> CaptionDecoder:
        """LSL's decoder over a vocabulary of the base-split captions."""
        ds = self.dataset
        base = set(ds.split_classes("base"))
        labels = ds.labels.tolist()
        vocab = Vocab.build(c for i, caps in enumerate(ds.captions) if labels[i] in base for c in caps)
        return CaptionDecoder(vocab, self.model.out_dim, self.cfg.lsl.hidden, self.cfg.lsl.word_dim).to(self.device)

    def _lsl_captions(self, flat: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One sampled caption per sample, as the decoder's word ids."""
        vocab = self.decoder.vocab
        table = self.data.caption_table(f"lsl:{vocab.key}", lambda texts: vocab.encode_batch(texts)[:, :MAX_TOKENS])
        return table.inputs[table.random_ids(flat, gen)]

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
        t = self.cfg.train
        slot = self._slot(step)
        fine = len(self.samplers) > 1 and \
            np.random.default_rng(seed_for(t.seed, "episode kind", slot)).random() < t.fine_grained_share
        return self.samplers[int(fine)].batch(seed_for(t.seed, "episodes"), slot * t.episodes_per_step,
                                              t.episodes_per_step)

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        """One optimizer step on this rank's episodes of ``step``; returns detached 0-d loss tensors
        (kept on the device: reading them would wait for the step to finish)."""
        cfg, e = self.cfg, self.cfg.episode
        seed = seed_for(cfg.train.seed, "step", self._slot(step))
        torch.manual_seed(seed)  # dropout, DropBlock, word dropout
        gen = torch.Generator(device=self.device).manual_seed(seed)
        episodes = self._episode_indices(step)
        n_ep, n = episodes.shape
        rows = episodes.reshape(-1)
        flat = self.data.upload(rows)
        live_teacher = self.teacher if self.teacher_cache is None else None
        needs_images = self.model.uses_image or (live_teacher is not None and live_teacher.uses_image)
        images = self.data.images_for(rows, cfg.data.augment, gen, cfg.data.hflip) if needs_images else None
        if needs_images and step + 1 < self.steps:
            self.data.prefetch(self._episode_indices(step + 1).reshape(-1))  # gathered while this step runs
        text_model = self.model if self.model.uses_text else live_teacher
        caption_ids = (inputs.pick_captions(self.data, text_model, flat, gen)
                       if text_model is not None and text_model.uses_text else None)
        set_lr(self.optimizer, cfg.train.lr * lr_factor(cfg.train, step, self.steps))

        self.model.train()
        text = inputs.text_inputs(self.data, self.model, flat, caption_ids)[0]
        captions = self._lsl_captions(flat, gen) if self.decoder is not None else None
        emb, scores, ce, caption_loss = self.forward(images if self.model.uses_image else None, text, n_ep,
                                                     captions=captions)
        loss, logs = ce, {"ce": ce.detach()}
        if self.decoder is not None:
            logs["lsl"] = caption_loss
        if self.loss_settings is not None:
            terms = self._distillation_terms(step, episodes, flat, images, caption_ids, emb, scores)
            ramp = min(1.0, step / (cfg.distill.warmup * self.steps)) if cfg.distill.warmup > 0 else 1.0
            loss = ce + ramp * cfg.distill.weight * terms["srl"]
            logs.update({k: v.detach() for k, v in terms.items()})
        optimizer_step(loss, self.optimizer, self.scaler)
        logs["loss"] = loss.detach()
        logs["acc"] = (scores.detach().argmax(-1) == episode_labels(e.way, e.query, self.device)).float().mean()
        return logs

    def _distillation_terms(self, step: int, episodes: np.ndarray, flat: torch.Tensor, images: torch.Tensor | None,
                            caption_ids: torch.Tensor | None, emb: torch.Tensor,
                            scores: torch.Tensor) -> dict[str, torch.Tensor]:
        """The SRL terms of this step's episodes against the frozen teacher."""
        e = self.cfg.episode
        n_ep, n = episodes.shape
        with torch.no_grad():
            if self.teacher_cache is not None:
                t_emb = self.teacher_cache.rows(episodes)
            else:
                with autocast(self.precision, self.device):
                    t_emb = inputs.embed(self.data, self.teacher, flat, images, caption_ids)
                t_emb = t_emb.float().view(n_ep, n, -1)
            t_scores = self.teacher.scores(t_emb, e.way, e.shot)
        if self.loss_settings.student_view == "clean":  # the student's relations on the inputs the teacher saw
            c_images = self.data.images_for(episodes.reshape(-1)) if self.model.uses_image else None
            c_text, c_mask = inputs.text_inputs(self.data, self.model, flat, all_captions=True)
            emb, scores, _, _ = self.forward(c_images, c_text, n_ep, c_mask)
        truth = episode_labels(e.way, e.query, self.device).expand(n_ep, -1)
        return spatial_relation_loss(scores, t_scores, emb, t_emb, self.loss_settings, truth)

    # -- validation and checkpoints -----------------------------------------------------------
    def validate(self) -> tuple[float, float]:
        """Accuracy on the fixed val episodes (sharded over the ranks, gathered on all)."""
        distributed.sync_buffers(self.model)
        accs = evaluate_episodes(self.model, self.data, self.val_episodes, self.val_setting.way,
                                 self.val_setting.shot, self.cfg.data.eval_captions == "mean", self.precision)
        m = mean_ci(accs)
        return m.mean, m.ci95

    def load_best(self) -> FewShotModel:
        """The model with the best validated weights of this run (``best.json``), in eval mode."""
        self.model.load_state_dict(model_state(load_checkpoint(self.run_dir / "best.json")[0]))
        return self.model.eval()

    def _meta(self) -> dict:
        return {"spec": self.model.spec(), "config": self.cfg.to_dict(), "step": self.step,
                "history": self.history, "pretrain_losses": self.pretrain_losses, "best_acc": self.best_acc,
                "dataset": self.dataset_summary, "provenance": provenance(self.device), "world_size": self.ranks.world,
                "precision": self.precision, "grad_scaler": self.scaler.state_dict(),
                "teacher_sha256": self.teacher_digest, "recovered": self.recovered}

    def save(self, best: bool) -> None:
        """Checkpoint (rank 0 writes; every rank holds the same weights)."""
        if self.ranks.main:
            extra = {"lsl": self.decoder} if self.decoder is not None else None
            save_checkpoint(self.run_dir / "last", self.model, self._meta(), self.optimizer, extra)
            if best:
                save_checkpoint(self.run_dir / "best", self.model, self._meta(), extra=extra)
        distributed.barrier()

    def resume(self) -> bool:
        """Continue from ``run_dir/last`` if it exists; returns whether it did. A run with another
        training config or teacher is refused, naming the differing fields."""
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
            raise ConfigError(f"{path} was trained by {meta.get('world_size', 1)} process(es); resume it with "
                              f"the same number (this is {self.ranks.world}) so it follows the same episodes")
        self.model.load_state_dict(model_state(tensors))
        if self.decoder is not None:
            self.decoder.load_state_dict(model_state(tensors, "lsl"))
        self.optimizer.load_state_dict(unflatten_optimizer(tensors, meta["optimizer"]))
        if meta.get("grad_scaler"):
            self.scaler.load_state_dict(meta["grad_scaler"])
        self.step, self.history, self.best_acc = meta["step"], meta["history"], meta["best_acc"]
        self.pretrain_losses = meta.get("pretrain_losses", [])
        self.recovered = [*meta.get("recovered", []), *self.recovered]
        self.best_acc, note = repair_best(self.run_dir, self.best_acc)
        if note is not None:
            self.recovered.append(f"step {self.step}: {note}")
            tqdm.write(f"{self.run_dir}: {note}")
        return True

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
        a non-finite loss stops the run before anything is saved. Writes ``metrics.jsonl`` as it
        goes and ``val_curve.png`` at the end.
        """
        folder = RunDirectory(self.run_dir)
        if self.ranks.main:
            folder.acquire()
        log = None
        try:
            if self.ranks.main:
                folder.check(resume, overwrite)
            resumed = resume and self.resume()  # checked before anything in the run directory is written
            if self.ranks.main:
                if overwrite and not resumed:
                    folder.clear()
                (self.run_dir / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=1))
                log = RunLog(self.run_dir, self.cfg.train.tensorboard)
            if resumed and self.ranks.main:
                tqdm.write(f"resumed {self.run_dir} at step {self.step}/{self.steps}")
            elif not resumed and self.cfg.train.pretrain_epochs > 0:
                self.pretrain_losses = pretrain(self.model, self.data, self.cfg, self.precision, self.scaler,
                                                self.ranks, progress and self.ranks.main)
                self.save(best=False)  # a kill during episodic training resumes after pre-training
            self._loop(log, progress and self.ranks.main, desc, read_every)
            if self.ranks.main and self.history:
                plot_val_curves({self.cfg.name: self.history}, self.run_dir / "val_curve.png",
                                f"{self.cfg.name}: validation accuracy ({self.val_setting.label()})")
            return self.history
        finally:
            if log is not None:
                log.close()
            folder.release()

    def _loop(self, log: RunLog | None, progress: bool, desc: str | None, read_every: int) -> None:
        cfg = self.cfg
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
                if log is not None:
                    log.write("train", self.step, {k: round(v, 5) for k, v in running.items()})
            if validate:
                acc, ci = self.validate()
                improved = acc > self.best_acc
                self.best_acc = max(self.best_acc, acc)
                entry = {"step": self.step, "episodes": self.step * cfg.train.episodes_per_step * self.ranks.world,
                         **{k: round(v, 5) for k, v in running.items()}, "val_acc": acc, "val_ci95": ci,
                         "seconds": round(time.perf_counter() - start, 2)}
                self.history.append(entry)
                if log is not None:
                    log.write("val", self.step, {"val_acc": acc, "val_ci95": ci, "best_val_acc": self.best_acc})
                self.save(best=improved)
                bar.set_postfix(loss=f"{running['loss']:.3f}", val=f"{100 * acc:.1f}",
                                best=f"{100 * self.best_acc:.1f}")
        bar.close()
