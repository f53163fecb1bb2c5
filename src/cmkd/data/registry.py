"""Which datasets exist and how to load one by name: the embedded glyphs or a prepared cache.

Prepared datasets live in ``$CMKD_DATA`` (default ``~/.cache/cmkd/datasets``) under the name
given to ``cmkd prepare --name`` (default ``<format>_<size>``), or anywhere, named by path.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from cmkd.config import DataConfig
from cmkd.data.augment import low_resolution
from cmkd.data.cache import load_prepared
from cmkd.data.dataset import FewShotDataset
from cmkd.data.formats.glyphs import load_glyphs
from cmkd.errors import ConfigError, DatasetError


def data_home() -> Path:
    return Path(os.environ.get("CMKD_DATA", Path.home() / ".cache" / "cmkd" / "datasets"))


def resolve(name: str) -> Path | None:
    """The folder of a prepared dataset given by path or by name in :func:`data_home`."""
    for candidate in (Path(name), data_home() / name):
        if (candidate / "meta.json").exists():
            return candidate
    return None


def prepared_datasets() -> list[tuple[str, Path, dict]]:
    home = data_home()
    if not home.is_dir():
        return []
    out = []
    for d in sorted(home.iterdir()):
        meta = d / "meta.json"
        if meta.exists():
            try:
                out.append((d.name, d, json.loads(meta.read_text())))
            except (OSError, ValueError) as err:
                out.append((d.name, d, {"error": f"{meta} cannot be read ({err})"}))
    return out


#: The data settings :func:`load_dataset` reads: two configs that agree on these load the same dataset.
CONTENT_KEYS = ("dataset", "image_size", "low_res", "captions")


def load_dataset(cfg: DataConfig) -> FewShotDataset:
    """The dataset named by ``cfg.dataset`` at ``cfg.image_size`` (seen at ``cfg.low_res`` pixels when set)."""
    if cfg.low_res and cfg.low_res >= cfg.image_size:
        raise ConfigError(f"data.low_res={cfg.low_res} must be below data.image_size={cfg.image_size} "
                          "(0: full resolution)")
    ds = _load(cfg)
    if not cfg.low_res:
        return ds
    return dataclasses.replace(ds, images=low_resolution(ds.images, cfg.low_res),
                               meta={**ds.meta, "low_res": cfg.low_res})


def _load(cfg: DataConfig) -> FewShotDataset:
    if cfg.dataset == "glyphs":
        try:
            return load_glyphs(cfg.image_size, cfg.captions)
        except DatasetError as err:
            raise ConfigError(f"data.image_size: {err}") from None
    folder = resolve(cfg.dataset)
    if folder is None:
        names = ["glyphs", *[n for n, _, _ in prepared_datasets()]]
        raise ConfigError(f"data.dataset={cfg.dataset!r} is neither 'glyphs' nor a prepared dataset (by path or in "
                          f"{data_home()}); available: {', '.join(names)}. Run `cmkd prepare` first")
    ds = load_prepared(folder, mmap=True)  # read into the device's memory, or streamed (data.placement)
    if ds.image_shape[1] != cfg.image_size:
        raise ConfigError(f"data.image_size={cfg.image_size} but {folder} was prepared at {ds.image_shape[1]}; "
                          f"set data.image_size={ds.image_shape[1]} or prepare again with --size {cfg.image_size}")
    return ds.with_class_name_captions() if cfg.captions == "names" else ds
