"""Experiment configuration: typed dataclasses, YAML files and ``key=value`` overrides.

An unknown key anywhere (file or command line) is an error that names the key and the
closest valid one, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cmkd.errors import ConfigError  # noqa: F401  (re-exported)
from cmkd.registry import BACKBONES, FUSIONS, HEADS, METHODS, TEXT_ENCODERS


@dataclass
class DataConfig:
    dataset: str = "glyphs"  # 'glyphs' or the path of a prepared cache
    image_size: int = 32  # square image side in pixels (a prepared cache is made at one size)
    augment: bool = True  # random affine warps of training images (on the device)
    hflip: bool = False  # never for letters; fine for birds and flowers
    eval_captions: str = "mean"  # how evaluation uses several captions: 'mean' or 'first'
    # 'dataset': the dataset's own text (per-image descriptions for glyphs, Reed captions for CUB);
    # 'names': each class's name as the only caption (an oracle text: it names the class)
    captions: str = "dataset"
    # 'device': all images on the training device; 'host': kept in (memory-mapped) host memory and
    # copied per step, prefetched; 'auto': 'device' when they take at most half its free memory
    placement: str = "auto"


@dataclass
class ModelConfig:
    modality: str = "image"  # 'image', 'text' or 'image+text' (the teacher)
    backbone: str = "conv4"  # image encoder: conv4, resnet12 or resnet18
    head: str = "protonet"  # few-shot head: protonet, matchingnet, relationnet or feat
    text_encoder: str = "bow"  # 'bow', 'bigru' or 'minilm'
    text_dim: int = 128  # width of the text embedding
    fusion: str = "gated"  # 'concat' (concatenation + MLP), 'gated' (gated sum) or 'late' (scaled side by side)
    # teacher training: share of episodes in which one modality (each half of the time) is hidden,
    # so that each one stays discriminative on its own
    modality_dropout: float = 0.0
    # late fusion: weight of each modality's own episode loss (its half of the embedding alone) beside the
    # fused one, so neither modality leans on the other
    branch_loss: float = 0.0
    embed_dim: int = 256  # width of the fused (teacher) embedding
    word_dropout: float = 0.0  # share of caption words dropped while training
    dropblock: float = 0.0  # ResNet-12 DropBlock rate in the last two blocks
    fce: bool = False  # MatchingNet full-context embeddings
    relation_loss: str = "mse"  # RelationNet: 'mse' to one-hot (the paper) or 'ce'
    feat_reg: float = 0.1  # FEAT: weight of the contrastive regulariser


@dataclass
class EpisodeConfig:
    way: int = 5  # classes per episode
    shot: int = 1  # labelled support samples per class
    query: int = 15  # query samples per class
    fine_grained: bool = False  # draw all classes of an episode from one group

    def label(self) -> str:
        return f"{self.way}-way {self.shot}-shot{' fine-grained' if self.fine_grained else ''}"


@dataclass
class TrainConfig:
    episodes: int = 1500  # training episodes in all (over all processes)
    episodes_per_step: int = 1  # episodes batched in one forward (fills a GPU)
    fine_grained_share: float = 0.0  # share of training episodes drawn fine-grained
    optimizer: str = "adam"  # 'adam' or 'sgd' (Nesterov momentum 0.9)
    lr: float = 1e-3  # learning rate at the start of the schedule
    weight_decay: float = 0.0  # L2 penalty of the optimizer
    schedule: str = "cosine"  # 'cosine', 'step' or 'none'
    step_size: int = 500  # schedule=step: episodes between learning-rate drops
    gamma: float = 0.5  # schedule=step: factor of each drop
    val_every: int = 100  # episodes between validations (and checkpoints)
    val_episodes: int = 200  # fixed val episodes scored at each validation
    val_query: int = 15  # queries per class in the val episodes
    tensorboard: bool = False  # also log to <run>/tensorboard (needs the tensorboard package)
    channels_last: bool = True  # measured faster for Conv-4 on this CPU (docs/design.md, speed model)
    precision: str = "auto"  # 'fp32', 'bf16', 'fp16' (autocast of the encoders) or 'auto': bf16 on GPUs
    compile: bool = False  # torch.compile the training forward (pays off on GPUs for long runs)
    seed: int = 0  # every random draw of the run derives from it
    threads: int = 0  # 0: all cores
    pretrain_epochs: int = 0  # many-way classification on base classes before episodes (FEAT, Meta-Baseline)
    pretrain_lr: float = 0.05  # pre-training learning rate (SGD, cosine)
    pretrain_batch: int = 128  # pre-training batch size


@dataclass
class DistillConfig:
    teacher: str | None = None  # path of a teacher run (or its checkpoint)
    method: str = "srl"  # 'none', 'kd', 'rkd' or 'srl'
    weight: float = 4.0  # lambda in L = head loss + lambda * SRL
    tau: float = 1.0  # SRL: temperature of the relation distributions (of standardised scores)
    kd_tau: float = 4.0  # method kd: temperature of Hinton KD on raw episode logits
    rel: float = 1.0  # a: relation-distribution KL
    dist: float = 1.0  # b: scale-free pairwise-distance structure
    angle: float = 0.0  # c: angle structure
    # SRL relation term over standardised scores: 'episode' (one scale per episode), 'query' (per query),
    # or 'none' (raw head scores, whose scale differs per head)
    standardise: str = "episode"
    correct_only: bool = False  # relation term only on queries the teacher classifies correctly
    warmup: float = 0.0  # share of training over which lambda ramps up linearly from 0
    # 'clean': the teacher embeds un-augmented samples (all captions averaged), computed once and
    # cached; 'same': it sees the student's augmented images and sampled captions every step
    teacher_inputs: str = "clean"
    # SRL: 'clean': the student's side of the SRL from an extra forward on the teacher's clean inputs (no
    # augmentation, all captions averaged); 'same': from its training forward (augmented, one sampled caption)
    student_inputs: str = "clean"


@dataclass
class LSLConfig:
    """Language-shaped learning (Mu et al., ACL 2020): the student's embedding must also let a caption
    decoder generate the sample's captions, during training only."""

    weight: float = 0.0  # weight of the caption decoder's loss beside the head loss (0: off; the paper used ~5)
    hidden: int = 200  # width of the decoder's GRU
    word_dim: int = 128  # width of its word embeddings


@dataclass
class Config:
    name: str = "run"  # run name: the run folder is <out>/<name>
    out: str = "runs"  # folder that holds the run folders
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    episode: EpisodeConfig = field(default_factory=EpisodeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    lsl: LSLConfig = field(default_factory=LSLConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CHOICES = {
    "model.modality": ("image", "text", "image+text"),
    "model.backbone": BACKBONES.names,
    "model.head": HEADS.names,
    "model.relation_loss": ("mse", "ce"),
    "model.text_encoder": TEXT_ENCODERS.names,
    "model.fusion": FUSIONS.names,
    "train.optimizer": ("adam", "sgd"),
    "train.schedule": ("cosine", "step", "none"),
    "distill.method": METHODS.names,
    "data.eval_captions": ("mean", "first"),
    "data.captions": ("dataset", "names"),
    "distill.teacher_inputs": ("clean", "same"),
    "distill.student_inputs": ("same", "clean"),
    "distill.standardise": ("none", "query", "episode"),
    "data.placement": ("auto", "device", "host"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
}


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"config field '{prefix or 'root'}' must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    obj = cls()
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in fields:
            near = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean '{prefix}{near[0]}'?)" if near else ""
            raise ConfigError(f"unknown config key '{path}'{hint}; valid keys here: {', '.join(fields)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            value = _build(type(current), value, f"{path}.")
        else:
            value = _coerce(value, current, path)
        setattr(obj, key, value)
    return obj


def build_section(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """A config dataclass from a mapping, each key and value checked (errors name ``prefix + key``)."""
    obj = _build(cls, values, prefix)
    if cls is ModelConfig:
        for dotted, allowed in CHOICES.items():
            section, key = dotted.split(".")
            if section == "model" and getattr(obj, key) not in allowed:
                raise ConfigError(f"field '{prefix}{key}' is {getattr(obj, key)!r}; choose one of {', '.join(allowed)}")
    return obj


def _coerce(value: Any, current: Any, path: str) -> Any:
    if current is None or value is None:
        return value
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config field '{path}' takes true or false, got {value!r}")
        return value
    if isinstance(current, (int, float)) and not isinstance(value, bool):
        try:
            number = type(current)(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config field '{path}' takes a number, got {value!r}") from None
        if isinstance(current, int) and number != value:
            raise ConfigError(f"config field '{path}' takes a whole number, got {value!r}")
        return number
    if isinstance(current, str) and not isinstance(value, str):
        raise ConfigError(f"config field '{path}' takes text, got {value!r}")
    return value


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set '{dotted}': '{part}' is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``'train.lr=0.01'`` -> ``('train.lr', 0.01)``; values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. train.lr=0.01")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: dict[str, Any] | None = None, flags: dict[str, Any] | None = None) -> Config:
    """The effective config. Each layer overrides the ones before it:

    defaults < ``base`` (a caller's own defaults) < the YAML file at ``path`` < ``flags``
    (dotted keys set by command-line flags the user typed) < ``key=value`` ``overrides``.
    """
    tree: dict[str, Any] = {}
    for key, value in (base or {}).items():
        _set_dotted(tree, key, value)
    if path is not None:
        path = resolve_config(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not a UTF-8 text file; pass a YAML config") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ConfigError(f"config file {path} is not valid YAML{where}: "
                              f"{getattr(err, 'problem', None) or err}") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a directory; pass a YAML file") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
        _merge(tree, loaded)
    for key, value in (flags or {}).items():
        _set_dotted(tree, key, value)
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(tree, key, value)
    cfg = _build(Config, tree, "")
    validate(cfg)
    return cfg


def shipped_configs() -> dict[str, Path]:
    """The configs that ship with cmkd, by name (``glyphs_teacher``, ``cub/conv4_student``, ...)."""
    root = Path(str(resources.files("cmkd") / "configs"))
    return {p.relative_to(root).with_suffix("").as_posix(): p for p in sorted(root.rglob("*.yaml"))}


def resolve_config(path_or_name: str | Path) -> Path:
    """A config file: an existing path, or the name of a shipped config (with or without ``.yaml``)."""
    path = Path(path_or_name)
    if path.exists():
        return path
    shipped = shipped_configs()
    name = path.as_posix().removesuffix(".yaml").removeprefix("configs/")
    if name in shipped:
        return shipped[name]
    raise ConfigError(f"config file {path} does not exist and is no shipped config; shipped: "
                      f"{', '.join(shipped)} (cmkd config list)")


def field_help() -> dict[str, tuple[Any, str]]:
    """Every config key (``section.key``) with its default and the comment that documents it."""
    import inspect
    import io
    import tokenize

    comments: dict[tuple[str, str], str] = {}
    for cls in (Config, DataConfig, ModelConfig, EpisodeConfig, TrainConfig, DistillConfig, LSLConfig):
        pending: list[str] = []
        for tok in tokenize.generate_tokens(io.StringIO(inspect.getsource(cls)).readline):
            if tok.type == tokenize.COMMENT:
                pending.append(tok.string.lstrip("# ").strip())
            elif tok.type == tokenize.NAME and tok.start[1] == 4 and tok.line.strip().startswith(f"{tok.string}:"):
                comments[(cls.__name__, tok.string)] = " ".join(pending)
                pending = []
            elif tok.type == tokenize.NEWLINE and "#" in tok.line and not tok.line.strip().startswith("#"):
                key = tok.line.split(":")[0].strip()
                comments[(cls.__name__, key)] = tok.line.split("#", 1)[1].strip()
                pending = []
    out = {}
    for section, value in dataclasses.asdict(Config()).items():
        if isinstance(value, dict):
            cls = type(getattr(Config(), section))
            for key, default in value.items():
                out[f"{section}.{key}"] = (default, comments.get((cls.__name__, key), ""))
        else:
            out[section] = (value, comments.get(("Config", section), ""))
    return out


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


#: Numeric fields: (smallest allowed, largest allowed, whether the smallest itself is allowed).
RANGES: dict[str, tuple[float, float | None, bool]] = {
    "episode.way": (2, None, True), "episode.shot": (1, None, True), "episode.query": (1, None, True),
    "data.image_size": (1, None, True), "model.text_dim": (1, None, True), "model.embed_dim": (1, None, True),
    "model.word_dropout": (0, 0.99, True), "model.dropblock": (0, 0.99, True), "model.feat_reg": (0, None, True),
    "model.modality_dropout": (0, 1, True), "model.branch_loss": (0, None, True),
    "train.episodes": (1, None, True), "train.episodes_per_step": (1, None, True),
    "train.fine_grained_share": (0, 1, True), "train.lr": (0, None, False), "train.weight_decay": (0, None, True),
    "train.step_size": (1, None, True), "train.gamma": (0, None, False), "train.val_every": (1, None, True),
    "train.val_episodes": (1, None, True), "train.val_query": (1, None, True), "train.threads": (0, None, True),
    "train.pretrain_epochs": (0, None, True), "train.pretrain_lr": (0, None, False),
    "train.pretrain_batch": (1, None, True), "train.seed": (0, None, True),
    "distill.weight": (0, None, True), "distill.tau": (0, None, False),
    "distill.kd_tau": (0, None, False), "lsl.weight": (0, None, True), "lsl.hidden": (1, None, True),
    "lsl.word_dim": (1, None, True), "distill.rel": (0, None, True),
    "distill.dist": (0, None, True), "distill.angle": (0, None, True), "distill.warmup": (0, 1, True),
}


def check_name(value: str, field: str) -> None:
    """A run or dataset name is one plain folder name: no separators, no '..', no control characters."""
    if (not value or value in (".", "..") or "/" in value or "\\" in value
            or any(ord(ch) < 32 for ch in value)):
        raise ConfigError(f"{field} {value!r} must be a plain folder name (no '/', '\\', '..' or control "
                          "characters); write outputs elsewhere with out=DIR")


def validate(cfg: Config) -> None:
    """Check choices, names and ranges; raise :class:`ConfigError` naming the field."""
    for dotted, allowed in CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            raise ConfigError(f"config field '{dotted}' is {value!r}; choose one of {', '.join(allowed)}")
    check_name(cfg.name, "config field 'name'")
    for dotted, (low, high, closed) in RANGES.items():
        section, key = dotted.split(".")
        _check_range(dotted, getattr(getattr(cfg, section), key), low, high, closed)


def _check_range(dotted: str, value: float, low: float, high: float | None, closed: bool) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"config field '{dotted}' must be a finite number, got {value}")
    too_low = value < low or (value == low and not closed)
    if too_low or (high is not None and value > high):
        bound = f"{'at least' if closed else 'greater than'} {low}" + (f" and at most {high}" if high is not None
                                                                        else "")
        raise ConfigError(f"config field '{dotted}' must be {bound}, got {value}")


#: Fields a resumed run may change: where it is written, how fast it runs, evaluation-only settings,
#: and the teacher's path (the teacher itself is compared by its weights). ``train.episodes`` may grow.
RESUME_MAY_CHANGE = ("name", "out", "train.threads", "data.placement", "train.compile", "train.tensorboard",
                     "distill.teacher")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resume_conflicts(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Training-relevant differences between a stored run's config and a new one, as
    ``'field: old -> new'`` lines (empty when the new config may continue the old run)."""
    a, b = _flatten(old), _flatten(new)
    out = []
    for key in sorted(set(a) | set(b)):
        if any(key == m or key.startswith(m + ".") for m in RESUME_MAY_CHANGE):
            continue
        if key == "train.episodes":
            if b.get(key, 0) < a.get(key, 0):
                out.append(f"train.episodes: {a[key]} -> {b[key]} (the episode budget may only grow)")
        elif a.get(key, "<unset>") != b.get(key, "<unset>"):
            out.append(f"{key}: {a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r}")
    return out
