"""Which datasets exist and how to load one by name."""

from __future__ import annotations

from cmkd.config import ConfigError, DataConfig
from cmkd.data.dataset import FewShotDataset
from cmkd.data.formats.glyphs import load_glyphs

AVAILABLE = ("glyphs",)


def load_dataset(cfg: DataConfig) -> FewShotDataset:
    """The dataset named by ``cfg.dataset`` at ``cfg.image_size``."""
    if cfg.dataset == "glyphs":
        try:
            return load_glyphs(cfg.image_size)
        except ValueError as err:
            raise ConfigError(f"data.image_size: {err}") from None
    raise ConfigError(f"data.dataset={cfg.dataset!r} is not available; choose one of {', '.join(AVAILABLE)} "
                      "(prepared CUB, Flowers and image-folder caches are not implemented yet)")
