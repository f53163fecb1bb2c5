"""The one episodic loop (teacher, student, distillation): a step is forward → objective → optimizer step.

Distillation adds the frozen teacher's side (:class:`Distiller`). Step ``t`` draws from ``(seed, t)`` in a
forked RNG, so a resumed run ends with an uninterrupted one's weights."""

from __future__ import annotations

import copy
import logging
import time

import torch
from tqdm import tqdm

from cmkd import distributed
from cmkd.checkpoint import load_checkpoint, model_state
from cmkd.config import Config
from cmkd.data.dataset import FewShotDataset
from cmkd.data.device import DeviceData
from cmkd.data.episodes import EpisodeSetting, episode_labels
from cmkd.errors import ConfigError
from cmkd.eval.evaluate import SampleEmbeddings, episode_list, evaluate_episodes
from cmkd.eval.stats import mean_ci
from cmkd.losses.objective import Objective
from cmkd.models import inputs
from cmkd.models.fewshot import FewShotModel, build_model, check_same_model, copy_encoder
from cmkd.registry import METHODS
from cmkd.runtime import forked_rng, provenance, resolve_precision, rng_state, seed_for
from cmkd.train.distiller import Distiller
from cmkd.train.forward import EpisodeForward, data_parallel
from cmkd.train.logs import RunLog, RunningMeans, read_logs, warn_if_at_chance
from cmkd.train.lsl import LanguageShaping
from cmkd.train.optim import build_optimizer, lr_factor, optimizer_step, set_lr
from cmkd.train.pretrain import pretrain
from cmkd.train.run_state import RunState
from cmkd.train.schedule import EpisodeSchedule

log = logging.getLogger("cmkd")


class Trainer:
    """Trains ``cfg``'s model on the base split, validating on fixed val episodes. A ``teacher`` (a frozen copy)
    makes it distillation; ``init`` (copied) gives starting weights; ``teacher_cache`` shares one teacher pass."""

    def __init__(self, cfg: Config, dataset: FewShotDataset, device: torch.device | str = "cpu",
                 teacher: FewShotModel | None = None, init: FewShotModel | None = None,
                 teacher_cache: SampleEmbeddings | None = None) -> None:
        if teacher is None and cfg.distill.teacher is not None:
            raise ConfigError(f"distill.teacher is set ({cfg.distill.teacher}) but no teacher was given: distil "
                              "with `cmkd distill` (or Trainer(..., teacher=model)), or unset distill.teacher")
        if init is not None:
            check_same_model(init, cfg, dataset)
        self.cfg, self.dataset, self.device, self.run_dir = cfg, dataset, torch.device(device), cfg.run_dir
        self.ranks = distributed.ranks()
        self.data = DeviceData(dataset, self.device, cfg.data.placement)
        self.precision = resolve_precision(cfg.train.precision, self.device)
        with forked_rng(self.device, cfg.train.seed):  # the initial weights are part of the seeded run
            self.model = (copy.deepcopy(init) if init is not None else build_model(cfg.model, dataset)).to(self.device)
            if teacher is not None and cfg.distill.init_encoder:
                copy_encoder(teacher, self.model, student_has_init=init is not None)
            if cfg.train.channels_last:
                self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            self.lsl = LanguageShaping(cfg.lsl, self.data, self.model.out_dim) if cfg.lsl.weight > 0 else None
            self._rng_after_init = rng_state(self.device)  # pre-training continues this stream
        method = METHODS.get(cfg.distill.method)(cfg.distill) if teacher is not None else None
        self.distiller = Distiller(teacher, method, cfg, self.data, teacher_cache) if teacher and method else None
        self.objective = Objective.build(cfg, self.model.head.loss_name, self.model.regularised,
                                         self.model.late_fusion, method)
        e, decoder = cfg.episode, self.lsl.decoder if self.lsl is not None else None
        step_forward = EpisodeForward(self.model, self.objective, e.way, e.shot, self.precision, self.device, decoder)
        self.forward = data_parallel(step_forward, self.device, self.ranks.world)
        self.forward = torch.compile(self.forward) if cfg.train.compile else self.forward
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.schedule = EpisodeSchedule(cfg, dataset, self.ranks)
        self.val_setting = EpisodeSetting(e.way, e.shot, cfg.train.val_query, cfg.train.val_fine_grained)
        self.val_episodes = episode_list(self.data, "val", self.val_setting, cfg.train.val_episodes,
                                         seed_for(cfg.train.seed, "validation"))
        self.optimizer = build_optimizer(cfg.train, [*self.model.parameters(),
                                                     *(decoder.parameters() if decoder else [])])
        self.state = RunState(self.run_dir, self.model, self.optimizer, self.scaler, decoder, self.ranks, {
            "config": cfg.to_dict(), "objective": str(self.objective), "dataset": dataset.summary(),
            "dataset_sha256": dataset.content_digest(), "provenance": provenance(self.device),
            "precision": self.precision, "teacher_sha256": self.distiller.digest if self.distiller else None})

    @property
    def teacher_cache(self) -> SampleEmbeddings | None:
        return self.distiller.cache if self.distiller is not None else None

    @property
    def best_acc(self) -> float:
        return self.state.progress.best_acc

    def distils(self, step: int) -> bool:
        """Whether ``step`` distils: its turn in the objective, and the teacher ahead (``while_teacher_leads``)."""
        return (self.distiller is not None and self.distiller.leads(self.history, self.validate)
                and self.objective.distills_at(step, self.schedule.steps, self.schedule.fine(step)))

    @property
    def history(self) -> list[dict]:
        return self.state.progress.history

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        """One optimizer step on this rank's episodes of ``step``: detached 0-d tensors (on the device) for each
        objective term, ``loss`` and ``acc``; reading one waits for the step."""
        with forked_rng(self.device, self.schedule.seed(step)):  # dropout, DropBlock, word and modality dropout
            return self._step(step)

    def _step(self, step: int) -> dict[str, torch.Tensor]:
        cfg, e, sched = self.cfg, self.cfg.episode, self.schedule
        gen = torch.Generator(device=self.device).manual_seed(sched.seed(step))
        episodes = sched.indices(step)
        n_ep, rows = episodes.shape[0], episodes.reshape(-1)
        flat = self.data.upload(rows)
        live = self.distiller.live if self.distiller is not None else None
        needs_images = self.model.uses_image or (live is not None and live.uses_image)
        distiller = self.distiller if self.distils(step) else None
        augment = cfg.data.augment and not (distiller is not None and cfg.distill.clean_steps)  # clean steps
        images = self.data.images_for(rows, augment, gen, cfg.data.hflip) if needs_images else None
        if needs_images and step + 1 < sched.steps:
            self.data.prefetch(sched.indices(step + 1).reshape(-1))  # gathered while this step runs
        text_model = self.model if self.model.uses_text else live
        caption_ids = (inputs.pick_captions(self.data, text_model, flat, gen)
                       if text_model is not None and text_model.uses_text else None)
        set_lr(self.optimizer, cfg.train.lr * lr_factor(cfg.train, step, sched.steps))
        self.model.train()
        text = inputs.text_inputs(self.data, self.model, flat, caption_ids)[0]
        captions = self.lsl.captions(flat, gen) if self.lsl is not None else None
        emb, scores, values = self.forward(images if self.model.uses_image else None, text, n_ep, captions=captions)
        if distiller is not None:
            values.update(distiller.terms(self.forward, self.model, episodes, flat, images, caption_ids, emb, scores,
                                          augment))
        loss = self.objective(values, step, sched.steps, distil=distiller is not None)
        optimizer_step(loss, self.optimizer, self.scaler)
        logs = {**{k: v.detach() for k, v in values.items()}, "loss": loss.detach()}
        logs["acc"] = (scores.detach().argmax(-1) == episode_labels(e.way, e.query, self.device)).float().mean()
        return logs

    def validate(self, model: FewShotModel) -> tuple[float, float]:
        """Accuracy of ``model`` (the student, or its teacher) on the fixed val episodes (sharded over the ranks)."""
        distributed.sync_buffers(model)
        m = mean_ci(evaluate_episodes(model, self.data, self.val_episodes, self.val_setting.way, self.val_setting.shot,
                                      self.cfg.data.eval_captions == "mean", self.precision))
        return m.mean, m.ci95

    def load_best(self) -> FewShotModel:
        """The model with the best validated weights of this run (``best.json``), in eval mode."""
        self.model.load_state_dict(model_state(load_checkpoint(self.run_dir / "best.json")[0]))
        return self.model.eval()

    def fit(self, resume: bool = False, progress: bool = True, desc: str | None = None,
            read_every: int = 20, overwrite: bool = False) -> list[dict]:
        """Train to the end (or ``resume``: :meth:`RunState.session`), validating and checkpointing every
        ``train.val_every`` episodes; a non-finite loss (read every ``read_every`` steps) stops it unsaved."""
        main = self.ranks.main
        with self.state.session(self.cfg, resume, overwrite) as (resumed, runlog):
            if main:
                log.info("%s: %s", self.cfg.name, self.objective)
            if not resumed and self.cfg.train.pretrain_epochs > 0:
                with forked_rng(self.device, state=self._rng_after_init):
                    self.state.progress.pretrain_losses = pretrain(self.model, self.data, self.cfg, self.precision,
                                                                   self.scaler, self.ranks, progress and main)
                self.state.save(best=False)  # a kill during episodic training resumes after pre-training
            self._loop(runlog, progress and main, desc, read_every)
            if main and self.history:
                from cmkd.eval.plots import plot_val_curves

                plot_val_curves({self.cfg.name: self.history}, self.run_dir / "val_curve.png",
                                f"{self.cfg.name}: validation accuracy ({self.val_setting.label()})")
        return self.history

    def _loop(self, runlog: RunLog | None, progress: bool, desc: str | None, read_every: int) -> None:
        cfg, p, sched = self.cfg, self.state.progress, self.schedule
        val_steps = max(1, cfg.train.val_every // (cfg.train.episodes_per_step * self.ranks.world))
        bar = tqdm(total=sched.steps, initial=p.step, desc=desc or cfg.name, disable=not progress,
                   unit="step", dynamic_ncols=True, leave=True)
        running = RunningMeans()
        pending: list[tuple[int, dict[str, torch.Tensor]]] = []
        start = time.perf_counter() - (p.history[-1]["seconds"] if p.history else 0.0)  # summed over resumes
        while p.step < sched.steps:
            pending.append((p.step, self.train_step(p.step)))
            p.step += 1
            bar.update(1)
            validate = p.step % val_steps == 0 or p.step == sched.steps
            if validate or len(pending) >= read_every:
                running.update(read_logs(pending, self.run_dir, sched.episodes))
                pending, means = [], running.current()
                if runlog is not None:
                    runlog.write("train", p.step, {k: round(v, 5) for k, v in means.items()})
            if validate:
                acc, ci = self.validate(self.model)
                warn_if_at_chance(acc, ci, cfg.episode.way, sched.episodes(p.step))
                improved = p.record(acc, ci, sched.episodes(p.step), means, time.perf_counter() - start)
                gate = self.distiller.gate(self.history, self.validate) if self.distiller is not None else {}
                p.history[-1].update(gate)  # the run folder records when distill.while_teacher_leads turns
                if runlog is not None:
                    runlog.write("val", p.step, {"val_acc": acc, "val_ci95": ci, "best_val_acc": p.best_acc, **gate})
                self.state.save(best=improved)
                bar.set_postfix(loss=f"{means['loss']:.3f}", val=f"{100 * acc:.1f}", best=f"{100 * p.best_acc:.1f}")
        bar.close()

