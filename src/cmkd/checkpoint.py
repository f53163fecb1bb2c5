"""The checkpoint file format: safetensors weights + JSON metadata, written atomically, checked on
load; and the model a checkpoint describes. (Run folders: :mod:`cmkd.run_folder`.)

Nothing is unpickled: a checkpoint is tensors (safetensors) and plain JSON, so loading a
file someone hands over cannot run code. The JSON carries the SHA-256 of the tensor file;
a truncated or altered checkpoint is refused with a message naming it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from cmkd.config import ModelConfig, build_section
from cmkd.errors import CheckpointError, ConfigError
from cmkd.files import file_sha256, refuse_link, write_atomic
from cmkd.models.fewshot import FewShotModel


def spec_digest(spec: dict) -> str:
    """SHA-256 of a model description (what rebuilds the model): an edited spec no longer matches."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able rest."""
    tensors, plain = {}, {"param_groups": state["param_groups"], "state": {}}
    for pid, entries in state["state"].items():
        plain["state"][str(pid)] = {}
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain["state"][str(pid)][key] = value
    return tensors, plain


def unflatten_optimizer(tensors: dict[str, torch.Tensor], plain: dict) -> dict:
    state: dict[int, dict[str, Any]] = {int(pid): dict(v) for pid, v in plain["state"].items()}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def save_checkpoint(path: str | Path, model: torch.nn.Module, meta: dict[str, Any],
                    optimizer: torch.optim.Optimizer | None = None,
                    extra: dict[str, torch.nn.Module] | None = None) -> Path:
    """Write a checkpoint whose JSON file is the commit point; returns the JSON path.

    The tensors go to a new ``<stem>-<digest>.safetensors``; then the previous ``<stem>.json``
    becomes ``<stem>.prev.json`` and the new JSON takes its place (each step atomic). A kill at
    any moment leaves ``<stem>.json`` or ``<stem>.prev.json`` naming complete weights.
    """
    base = Path(path)
    if base.suffix == ".json":
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for prefix, module in (extra or {}).items():  # training-only parts (LSL's decoder): not in model_state
        tensors.update({f"{prefix}.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()})
    meta = dict(meta)
    if optimizer is not None:
        opt_tensors, opt_plain = flatten_optimizer(optimizer.state_dict())
        tensors.update(opt_tensors)
        meta["optimizer"] = opt_plain
    blob = save(tensors)
    digest = hashlib.sha256(blob).hexdigest()
    weights = base.with_name(f"{base.name}-{digest[:16]}.safetensors")
    write_atomic(weights, blob)
    meta["weights_sha256"] = digest
    meta["weights_file"] = weights.name
    if "spec" in meta:
        meta["spec_sha256"] = spec_digest(meta["spec"])
    info, prev = base.with_suffix(".json"), base.with_name(base.name + ".prev.json")
    refuse_link(info)
    refuse_link(prev)
    if info.exists():
        os.replace(info, prev)
    write_atomic(info, json.dumps(meta, indent=1, default=str))
    _drop_unreferenced(base, keep={weights.name, _weights_named_by(prev)})
    return info


def _weights_named_by(info: Path) -> str | None:
    try:
        return json.loads(info.read_text()).get("weights_file")
    except (OSError, ValueError):
        return None


def _drop_unreferenced(base: Path, keep: set[str | None]) -> None:
    for f in base.parent.glob(f"{base.name}-*.safetensors"):
        if f.name not in keep:
            f.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a checkpoint, after checking the tensor file's checksum.

    ``path`` is the checkpoint's ``.json`` file or its stem (``runs/x/best``).
    """
    info = Path(path)
    if info.suffix != ".json":
        info = info.with_name(info.name + ".json")
    if not info.exists():
        raise CheckpointError(f"checkpoint {info} does not exist")
    try:
        meta = json.loads(info.read_text())
        name = meta["weights_file"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint metadata {info} is corrupt ({err!r}); use an earlier checkpoint") from None
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors") or \
            name.startswith("."):
        raise CheckpointError(f"checkpoint metadata {info}: field 'weights_file' must name a .safetensors file "
                              f"beside it, got {name!r}; use an earlier checkpoint")
    weights = info.with_name(name)
    if not weights.exists():
        raise CheckpointError(f"checkpoint weights {weights} named by {info.name} are missing")
    if file_sha256(weights) != meta.get("weights_sha256"):
        raise CheckpointError(f"checkpoint weights {weights} do not match the checksum in {info.name}: the "
                              "file is truncated or was altered; use an earlier checkpoint")
    if "spec_sha256" in meta and spec_digest(meta.get("spec")) != meta["spec_sha256"]:
        raise CheckpointError(f"checkpoint {info}: its 'spec' (the model description) does not match its checksum: "
                              "the file was edited; use an earlier checkpoint")
    try:
        return load_file(str(weights)), meta
    except Exception as err:  # safetensors refuses anything else (a pickle, a torch.save file) without running it
        raise CheckpointError(f"checkpoint weights {weights} are not a safetensors file ({err}); use an earlier "
                              "checkpoint") from None


def load_latest_good(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """The checkpoint at ``path`` or, when it is damaged, the previous one kept beside it."""
    info = Path(path)
    prev = info.with_name(info.stem + ".prev.json")
    try:
        return (*load_checkpoint(info), info)
    except CheckpointError as err:
        if not prev.exists():
            raise
        warnings.warn(f"{err}; falling back to the previous checkpoint {prev}", stacklevel=2)
        return (*load_checkpoint(prev), prev)


def state_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a model's state (names and values): identifies a teacher wherever it is stored."""
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_state(tensors: dict[str, torch.Tensor], prefix: str = "model") -> dict[str, torch.Tensor]:
    """The state dict stored under ``prefix`` (the model's; ``"lsl"``: LSL's training-only decoder)."""
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


_UNKNOWN_PART = ("if it names a part of your own, register it first (cmkd.register; on the command line "
                 "cmkd --import your_module ...), otherwise the file is damaged")


def load_model(path: str | Path, device: torch.device | str = "cpu",
               image_encoder: torch.nn.Module | None = None) -> tuple[FewShotModel, dict]:
    """A model from a checkpoint (``best``/``last`` file or a run directory), in eval mode, and its metadata.

    A model trained around your own image encoder object needs a fresh instance of it (``image_encoder=``);
    one whose encoder class you registered (:func:`cmkd.register`) needs only the registration."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.json"
    elif path.suffix != ".json":
        raise CheckpointError(f"{path} is neither a run directory nor a checkpoint .json file")
    tensors, meta, used = load_latest_good(path)
    model = model_from_checkpoint(tensors, meta, used, image_encoder)
    meta = {**meta, "loaded_from": str(used)}  # differs from the path asked for when it fell back to .prev
    model = model.to(device)
    if meta.get("config", {}).get("train", {}).get("channels_last", False):
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model.eval(), meta


def load_teacher(paths: str, device: torch.device | str = "cpu") -> tuple[FewShotModel, list[dict]]:
    """The teacher ``distill.teacher`` names: one run (or checkpoint), or several, comma-separated, as their
    :class:`~cmkd.models.ensemble.TeacherEnsemble` (the mean of their scores); and each run's metadata."""
    from cmkd.models.ensemble import TeacherEnsemble

    names = [p.strip() for p in paths.split(",")]
    if not all(names):
        raise ConfigError(f"distill.teacher={paths!r} has an empty name (a trailing or doubled comma); write RUN, "
                          "or RUN1,RUN2,... for an ensemble")
    loaded = [load_model(p, device) for p in names]
    models, metas = [m for m, _ in loaded], [meta for _, meta in loaded]
    return (models[0] if len(models) == 1 else TeacherEnsemble(models).eval()), metas


def model_from_checkpoint(tensors: dict[str, torch.Tensor], meta: dict, path: Path,
                          image_encoder: torch.nn.Module | None = None) -> FewShotModel:
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
    except (ConfigError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its 'spec' does not describe a model ({err}); {_UNKNOWN_PART}") from None
    spec = {**spec, "model": dataclasses.asdict(model_cfg)}
    try:
        FewShotModel.check_encoder(spec, image_encoder)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
    if image_encoder is not None:  # the user's module holds real tensors: build for real, then compare
        model = FewShotModel.from_spec(spec, image_encoder)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    else:
        try:
            with torch.device("meta"):
                shapes = {k: tuple(v.shape) for k, v in FewShotModel.from_spec(spec).state_dict().items()}
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: its 'spec' does not describe a model ({err}); {_UNKNOWN_PART}") from None
    stored = {k: tuple(v.shape) for k, v in model_state(tensors).items()}
    if stored != shapes:
        diff = sorted(set(stored.items()) ^ set(shapes.items()))[:3]
        raise CheckpointError(f"{path}: its 'spec' does not match its weights (first differences: {diff}); the file "
                              "is damaged or was edited")
    if image_encoder is None:
        model = FewShotModel.from_spec(spec)
    model.load_state_dict(model_state(tensors))
    return model
