"""cmkd: cross-modal knowledge distillation for fine-grained one-shot classification
(Zhao et al., ICASSP 2021).

The public API, imported on first use (``import cmkd`` stays light)::

    cfg = cmkd.load_config("glyphs_teacher", ["train.episodes=300"])
    trainer = cmkd.Trainer(cfg, cmkd.load_dataset(cfg.data)); trainer.fit()
    model, meta = cmkd.load_model("runs/glyphs_teacher")
    terms = cmkd.spatial_relation_loss(student_scores, teacher_scores, student_emb, teacher_emb, settings)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cmkd.version import __version__

_EXPORTS = {
    "Config": "cmkd.config", "load_config": "cmkd.config", "ConfigError": "cmkd.errors", "SRLConfig": "cmkd.config",
    "FewShotDataset": "cmkd.data.dataset", "load_dataset": "cmkd.data.registry",
    "EpisodeSampler": "cmkd.data.episodes", "DeviceData": "cmkd.data.device",
    "FewShotModel": "cmkd.models.fewshot", "build_model": "cmkd.models.fewshot",
    "spatial_relation_loss": "cmkd.losses.srl", "Objective": "cmkd.losses.objective",
    "load_model": "cmkd.checkpoint", "Trainer": "cmkd.train.loop",
    "compare": "cmkd.eval.compare", "OneShotClassifier": "cmkd.predict",
}
__all__ = ["__version__", "Config", "load_config", "ConfigError", "FewShotDataset", "load_dataset", "EpisodeSampler",
           "DeviceData", "FewShotModel", "build_model", "spatial_relation_loss", "SRLConfig", "Objective",
           "load_model",
           "Trainer", "compare", "OneShotClassifier"]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from cmkd.checkpoint import load_model
    from cmkd.config import Config, SRLConfig, load_config
    from cmkd.data.dataset import FewShotDataset
    from cmkd.data.device import DeviceData
    from cmkd.data.episodes import EpisodeSampler
    from cmkd.data.registry import load_dataset
    from cmkd.errors import ConfigError
    from cmkd.eval.compare import compare
    from cmkd.losses.objective import Objective
    from cmkd.losses.srl import spatial_relation_loss
    from cmkd.models.fewshot import FewShotModel, build_model
    from cmkd.predict import OneShotClassifier
    from cmkd.train.loop import Trainer


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cmkd' has no attribute {name!r}")
