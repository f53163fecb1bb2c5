"""A trained image model as one graph for deployment: ONNX (any runtime, no Python) or a ``torch.export``
program (``.pt2``: ``torch.export.load``, AOTInductor). TorchScript is deprecated in PyTorch and not offered.

The graph takes ``support`` float32 ``[S, C, H, W]`` and ``query`` ``[Q, C, H, W]`` (images at the model's
size, values in [0, 1]) and ``support_labels`` int64 ``[S]`` (any values, any order) and returns
``logits [Q, way]``, column ``c`` for the ``c``-th smallest label. ``S`` and ``Q`` may vary; ``way`` is
fixed when exporting (a support set with another number of distinct labels gives NaN logits). The student
is what leaves Python: it needs no text.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from cmkd.checkpoint import load_model
from cmkd.data.augment import normalise
from cmkd.data.episodes import local_labels
from cmkd.errors import ConfigError
from cmkd.files import publish, scratch_for
from cmkd.models.fewshot import FewShotModel

FORMATS = ("onnx", "pt2")


class EpisodeGraph(nn.Module):
    """A few-shot image model as a function of (support, support labels, query) for a fixed ``way``."""

    def __init__(self, model: FewShotModel, way: int) -> None:
        super().__init__()
        if model.uses_text:
            raise ConfigError(f"only image models export (this one sees '{model.cfg.modality}'; its text needs "
                              "cmkd's tokeniser): export the image student")
        self.model, self.way = model.eval(), way

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        local, ways = local_labels(support_labels.unsqueeze(0))
        s = self.model.embed(normalise(support)).unsqueeze(0)
        q = self.model.embed(normalise(query)).unsqueeze(0)
        logits = self.model.head(s, local, q, self.way)[0]
        # a graph cannot raise: support with another number of classes than `way` gives NaN, never a wrong answer
        return logits + torch.where(ways == self.way, 0.0, float("nan"))


def export(run: str | Path, out: str | Path, format: str = "onnx", way: int | None = None,
           image_encoder: nn.Module | None = None) -> Path:
    """Write the model of ``run`` (a run folder or checkpoint) to ``out`` as one graph; ``way`` defaults to the
    run's training ``episode.way``. Returns ``out``."""
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; one of {', '.join(FORMATS)}")
    model, meta = load_model(run, "cpu", image_encoder=image_encoder)
    way = way or int(meta.get("config", {}).get("episode", {}).get("way", 5))
    if way < 2:
        raise ConfigError(f"--way must be at least 2, got {way}")
    graph = EpisodeGraph(model.to(memory_format=torch.contiguous_format), way).eval()  # type: ignore[call-overload]
    c, size = model.in_channels, model.image_size
    example = (torch.rand(way, c, size, size), torch.arange(way), torch.rand(3, c, size, size))
    support, query = torch.export.Dim("support", min=2), torch.export.Dim("query", min=1)
    dynamic = ({0: support}, {0: support}, {0: query})
    out = Path(out)
    with scratch_for(out) as scratch:
        if format == "pt2":
            torch.export.save(torch.export.export(graph, example, dynamic_shapes=dynamic), str(scratch))
        else:
            _to_onnx(graph, example, dynamic, scratch)
        publish(scratch, out)
    return out


def _to_onnx(graph: EpisodeGraph, example: tuple[torch.Tensor, ...], dynamic: tuple, path: Path) -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401  (torch's exporter needs both)
    except ImportError:
        raise ConfigError("ONNX export needs onnx and onnxscript: pip install 'cmkd[export]'") from None
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms" and the like
    try:
        with warnings.catch_warnings():  # the exporter's own notes: one axis named twice, a deprecated pytree check
            warnings.filterwarnings("ignore", message=".*shares the same shape constraints.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            torch.onnx.export(graph, example, str(path), input_names=["support", "support_labels", "query"],
                              output_names=["logits"], dynamo=True, dynamic_shapes=dynamic, verbose=False,
                              external_data=False)
    finally:
        registry_log.setLevel(level)
