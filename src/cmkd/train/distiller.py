"""The teacher's side of distillation: a frozen copy of the teacher, its cached embeddings, and the
distillation method's terms for a step (Zhao et al., ICASSP 2021)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from cmkd import distributed
from cmkd.checkpoint import state_digest
from cmkd.config import Config
from cmkd.data.dataset import FewShotDataset
from cmkd.data.device import DeviceData
from cmkd.data.episodes import episode_labels
from cmkd.errors import ConfigError
from cmkd.eval.evaluate import EmbeddedPerLookup, SampleEmbeddings, embed_samples
from cmkd.losses.distillation import Method
from cmkd.models import inputs
from cmkd.models.fewshot import FewShotModel
from cmkd.runtime import autocast, resolve_precision

log = logging.getLogger("cmkd")


def embed_teacher(teacher: FewShotModel, data: DeviceData, cfg: Config) -> SampleEmbeddings:
    """The teacher's clean embeddings of the base samples (shareable by several students): the whole split in one
    pass, or, for a run that draws fewer than half as many samples as the split holds, each step's own samples at
    that step (a short run then costs less than half a pass, and a run long enough to draw most samples anyway keeps
    the pass's large batches and its exact values)."""
    base = data.dataset.split_indices("base")
    all_captions, precision = cfg.data.eval_captions == "mean", resolve_precision(cfg.train.precision, data.device)
    if 2 * draws(cfg) < len(base):
        log.info("the teacher embeds each step's samples at that step (a run of %d episodes draws %d samples, "
                 "fewer than half the %d base samples)", cfg.train.episodes, draws(cfg), len(base))
        return EmbeddedPerLookup(teacher, data, base, all_captions, precision)
    log.info("the teacher embeds the %d base samples once (its clean view, cached for every step)", len(base))
    return embed_samples(teacher, data, base, all_captions, precision)


def draws(cfg: Config) -> int:
    """The samples a run's training episodes draw (each budget of a plateau search is a run of its own)."""
    e = cfg.episode
    return cfg.train.episodes * e.way * (e.shot + e.query)


def check_teacher_images(teacher: FewShotModel, dataset: FewShotDataset) -> None:
    """Refuse a dataset whose images the teacher cannot read (other channels or size)."""
    c, h, _ = dataset.image_shape
    if teacher.uses_image and (teacher.in_channels, teacher.image_size) != (c, h):
        raise ConfigError(f"the teacher sees {teacher.in_channels}-channel {teacher.image_size}px images but "
                          f"{dataset.name} has {c}-channel {h}px images; distil on the data the teacher "
                          "was trained on (data.dataset, data.image_size)")


class Distiller:
    """Scores a step's episodes with the frozen teacher and returns ``method``'s terms.

    The teacher is copied (the caller's module is left as it was), put in eval mode and frozen.
    With ``distill.teacher_inputs=clean`` its embeddings of the base split are made at the first use (so a
    run refused before training costs no teacher pass; see ``embed_teacher``), or taken from ``cache``, shared
    by several students.
    """

    def __init__(self, teacher: FewShotModel, method: Method, cfg: Config, data: DeviceData,
                 cache: SampleEmbeddings | None = None) -> None:
        check_teacher_images(teacher, data.dataset)
        if cfg.distill.episodes == "fine" and distributed.ranks().world > 1:
            raise ConfigError("distill.episodes=fine needs one training process: each process draws its own kind "
                              "of episode, so one would distil a step that another does not; train in one process "
                              "or choose the steps with distill.every")
        self.digest = state_digest(teacher)
        self.teacher = copy.deepcopy(teacher).to(data.device).eval().requires_grad_(False)
        self.method, self.cfg, self.data = method, cfg, data
        self.precision = resolve_precision(cfg.train.precision, data.device)
        self.clean = cfg.distill.teacher_inputs == "clean"
        # a per-lookup cache keeps nothing to share, and was chosen for another run's length: this run chooses
        self._cache = cache if self.clean and not isinstance(cache, EmbeddedPerLookup) else None
        kept = related_columns(cfg.episode.way, cfg.episode.shot, cfg.episode.query, method.queries)
        # the sub-episode's columns, for the host's episode table and on the device (no copy per step); None: all
        self.columns = None if kept is None else (kept, torch.as_tensor(kept, device=data.device))
        self.val_acc: float | None = None  # the teacher's, on the student's val episodes (while_teacher_leads)
        self._leading: bool | None = None  # whether it led at the last check (the log says when that changes)

    @property
    def cache(self) -> SampleEmbeddings | None:
        """The teacher's clean embeddings of the base split (computed on first use); None when it embeds live."""
        if self.clean and self._cache is None:
            self._cache = embed_teacher(self.teacher, self.data, self.cfg)
        return self._cache

    def leads(self, history: list[dict], validate: Callable[[FewShotModel], tuple[float, float]]) -> bool:
        """Whether the student's next steps distil: always, unless ``distill.while_teacher_leads``; then until its
        first validation, and after that while the teacher's accuracy on the same val episodes (``validate``,
        called once) is above the student's last (``history``: the student's validations)."""
        if not self.cfg.distill.while_teacher_leads or not history:
            return True
        if self.val_acc is None:
            self.val_acc = validate(self.teacher)[0]
        student = history[-1]["val_acc"]
        if (leads := self.val_acc > student) != self._leading:
            log.info("after %d episodes the teacher is %s the student on val (%.2f%% vs %.2f%%): %s",
                     history[-1]["episodes"], "ahead of" if leads else "level with or behind", 100 * self.val_acc,
                     100 * student, "distilling" if leads else "plain steps")
            self._leading = leads
        return leads

    def gate(self, history: list[dict], validate: Callable[[FewShotModel], tuple[float, float]]) -> dict:
        """What a validation's record adds under ``distill.while_teacher_leads``: whether the next steps distil and
        the teacher's val accuracy they were judged against (nothing without the gate)."""
        if not self.cfg.distill.while_teacher_leads:
            return {}
        return {"distilling": self.leads(history, validate), "teacher_val_acc": self.val_acc}

    @property
    def live(self) -> FewShotModel | None:
        """The teacher when it embeds each step's own inputs (no cache)."""
        return None if self.clean else self.teacher

    def trains_on_clean(self, model: FewShotModel, augmented: bool) -> bool:
        """Whether the student's training forward already sees the clean view (an image-only student whose
        step is not ``augmented``), so the SRL's student side reuses it instead of a second forward."""
        return model.uses_image and not model.uses_text and not augmented

    def terms(self, forward: nn.Module, model: FewShotModel, episodes: np.ndarray, flat: torch.Tensor,
              images: torch.Tensor | None, caption_ids: torch.Tensor | None, emb: torch.Tensor,
              scores: torch.Tensor, augmented: bool) -> dict[str, torch.Tensor]:
        """The method's terms for this step's episodes; ``emb``/``scores`` are the student's training view
        (``augmented`` or not), replaced by an extra forward on the teacher's clean inputs when the method asks
        for them and the training view is not already clean. A method relating fewer queries
        (``distill.srl.queries``) sees the sub-episode of the supports and each class's first queries, on both
        sides, so its second forward is cheaper."""
        e = self.cfg.episode
        n_ep, query = episodes.shape[0], e.query
        second = self.method.student_view == "clean" and not self.trains_on_clean(model, augmented)
        if self.columns is not None:  # the sub-episode of the supports and each class's first queries
            (host_cols, cols), query = self.columns, self.method.queries
            flat = take_columns(flat, n_ep, cols)
            images = None if images is None else take_columns(images, n_ep, cols)
            caption_ids = None if caption_ids is None else take_columns(caption_ids, n_ep, cols)
            episodes = episodes[:, host_cols]
            if not second:
                emb = emb[:, cols]
                scores = model.scores(emb, e.way, e.shot)
        n = episodes.shape[1]
        with torch.no_grad():
            if self.cache is not None:  # the clean view
                t_emb = self.cache.rows(episodes)
            else:
                with autocast(self.precision, self.data.device):
                    t_emb = inputs.embed(self.data, self.teacher, flat, images, caption_ids)
                t_emb = t_emb.float().view(n_ep, n, -1)
            t_scores = self.teacher.scores(t_emb, e.way, e.shot)
        if second:  # the student's relations on the inputs the teacher saw: a second forward
            c_images = self.data.images_for(episodes.reshape(-1)) if model.uses_image else None
            c_text, c_mask = inputs.text_inputs(self.data, model, flat, all_captions=True)
            emb, scores, _ = forward(c_images, c_text, n_ep, c_mask)
        truth = episode_labels(e.way, query, self.data.device).expand(n_ep, -1)
        return self.method(scores, t_scores, emb, t_emb, truth)


def related_columns(way: int, shot: int, query: int, kept: int) -> np.ndarray | None:
    """Episode columns of the supports and of each class's first ``kept`` queries (episodes are support-first,
    class-major, their queries drawn at random); None when all ``query`` are kept (``kept`` 0 or ``query``)."""
    if kept in (0, query):
        return None
    support = way * shot
    queries = support + np.repeat(np.arange(way), kept) * query + np.tile(np.arange(kept), way)
    return np.concatenate([np.arange(support), queries])


def take_columns(x: torch.Tensor, n_ep: int, cols: torch.Tensor) -> torch.Tensor:
    """The rows of ``cols`` in each episode of per-sample ``x`` (``[n_ep * n, ...]``, episode-major)."""
    return x.view(n_ep, -1, *x.shape[1:])[:, cols].flatten(0, 1)
