"""cmkd: cross-modal knowledge distillation for fine-grained one-shot classification
(Zhao et al., ICASSP 2021).

The public API, imported on first use (``import cmkd`` stays light):

- configs: ``load_config``, ``Config``, ``SRLConfig``, ``ConfigError``
- data: ``load_dataset``, ``FewShotDataset`` (``.from_samples``, ``.from_torch``), ``EpisodeSampler``,
  ``EpisodeBatchSampler`` (a ``DataLoader`` batch sampler), ``DeviceData``, ``as_image``
- models: ``FewShotModel`` (``model(support, support_labels, query)`` -> logits), ``build_model``,
  ``TeacherEnsemble`` (several teachers as one),
  ``register`` (your own backbone, head, text encoder or fusion, by name), ``load_model``, ``embed`` (a
  model's embeddings of dataset samples, captions included)
- training and distillation: ``Trainer``, ``Objective``, ``spatial_relation_loss``
- results and deployment: ``compare``, ``OneShotClassifier``, ``export`` (ONNX, torch.export)

Example::

    cfg = cmkd.load_config("glyphs_teacher", ["train.episodes=300"])
    trainer = cmkd.Trainer(cfg, cmkd.load_dataset(cfg.data)); trainer.fit()
    model, meta = cmkd.load_model("runs/glyphs_teacher")
    logits = model(support, support_labels, query)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cmkd.version import __version__

_EXPORTS = {
    "Config": "cmkd.config", "load_config": "cmkd.config", "ConfigError": "cmkd.errors", "SRLConfig": "cmkd.config",
    "FewShotDataset": "cmkd.data.dataset", "load_dataset": "cmkd.data.registry",
    "EpisodeSampler": "cmkd.data.episodes", "EpisodeBatchSampler": "cmkd.data.batch_sampler",
    "DeviceData": "cmkd.data.device", "as_image": "cmkd.data.images",
    "FewShotModel": "cmkd.models.fewshot", "build_model": "cmkd.models.fewshot",
    "TeacherEnsemble": "cmkd.models.ensemble", "register": "cmkd.registry",
    "embed": "cmkd.models.inputs",
    "spatial_relation_loss": "cmkd.losses.srl", "Objective": "cmkd.losses.objective",
    "load_model": "cmkd.checkpoint", "Trainer": "cmkd.train.loop",
    "compare": "cmkd.eval.compare", "OneShotClassifier": "cmkd.predict", "export": "cmkd.deploy",
}
__all__ = ["__version__", "Config", "load_config", "ConfigError", "SRLConfig", "FewShotDataset", "load_dataset",
           "EpisodeSampler", "EpisodeBatchSampler", "DeviceData", "as_image", "FewShotModel", "build_model",
           "TeacherEnsemble", "register", "embed", "spatial_relation_loss", "Objective", "load_model", "Trainer",
           "compare", "OneShotClassifier", "export"]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from cmkd.checkpoint import load_model
    from cmkd.config import Config, SRLConfig, load_config
    from cmkd.data.batch_sampler import EpisodeBatchSampler
    from cmkd.data.dataset import FewShotDataset
    from cmkd.data.device import DeviceData
    from cmkd.data.episodes import EpisodeSampler
    from cmkd.data.images import as_image
    from cmkd.data.registry import load_dataset
    from cmkd.deploy import export
    from cmkd.errors import ConfigError
    from cmkd.eval.compare import compare
    from cmkd.losses.objective import Objective
    from cmkd.losses.srl import spatial_relation_loss
    from cmkd.models.ensemble import TeacherEnsemble
    from cmkd.models.fewshot import FewShotModel, build_model
    from cmkd.models.inputs import embed
    from cmkd.predict import OneShotClassifier
    from cmkd.registry import register
    from cmkd.train.loop import Trainer


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cmkd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
