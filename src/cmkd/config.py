"""Experiment configuration: the dataclasses below *are* the schema.

Every field carries its help text, its choices or range, whether a resumed run may change it,
and when it is read (:func:`setting`). From that one description come ``cmkd config keys``,
validation, the command line's choices and the resume check. A config is built from layers
(defaults < a caller's base < YAML file < typed flags < ``key=value`` overrides); an unknown key,
a value of the wrong type, or a key that the chosen command, model or method does not read is an
error naming the key and the fix, so nothing falls back to a default or is ignored silently.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cmkd.errors import ConfigError
from cmkd.registry import BACKBONES, FUSIONS, HEADS, METHODS, TEXT_ENCODERS, Registry

#: The class splits of every dataset, in this order.
SPLITS = ("base", "val", "novel")

#: Where a key is read: ``(dotted key, values)``; the pseudo key ``command`` is the ``cmkd`` subcommand.
ReadWhen = tuple[str, tuple[Any, ...] | str]  # (key, allowed values or "positive")


def setting(default: Any, help: str, *, choices: tuple[str, ...] | Registry | None = None,
            low: float | None = None, high: float | None = None, above: bool = False, resume: str = "fixed",
            read_when: ReadWhen | None = None) -> Any:
    """A config field and its schema: ``help``; ``choices``; the range ``[low, high]`` (``above``:
    strictly above ``low``); ``resume`` = ``fixed`` (a resumed run keeps it), ``free`` (may change)
    or ``grow`` (may only grow); ``read_when``: the condition under which anything reads it."""
    return field(default=default, metadata={"help": help, "choices": choices, "range": (low, high, above),
                                            "resume": resume, "read_when": read_when})


def section(cls: type, help: str, read_when: ReadWhen | None = None) -> Any:
    return field(default_factory=cls, metadata={"help": help, "read_when": read_when, "resume": "fixed"})


IMAGE = ("model.modality", ("image", "image+text"))
TEXT = ("model.modality", ("text", "image+text"))
TEACHER = ("model.modality", ("image+text",))


@dataclass
class DataConfig:
    dataset: str = setting("glyphs", "'glyphs' or the name or path of a prepared cache (cmkd datasets)")
    image_size: int = setting(32, "square image side in pixels (a prepared cache is made at one size)",
                              low=8, high=4096)
    augment: bool = setting(True, "random affine warps of training images (on the device)")
    hflip: bool = setting(False, "random horizontal flips: never for letters, fine for birds and flowers")
    low_res: int = setting(0, "pixels per side every image is area-averaged down to, then scaled back up to "
                           "data.image_size: small marks become hard to see, as in a photo taken from afar "
                           "(0: full resolution)", low=0, high=4096)
    eval_captions: str = setting("mean", "how evaluation uses several captions per sample: the mean embedding "
                                 "or the first", choices=("mean", "first"))
    captions: str = setting("dataset", "'dataset': the dataset's own text (per-image descriptions for glyphs, "
                            "Reed captions for CUB); 'names': each class's name as its only caption (an oracle)",
                            choices=("dataset", "names"))
    placement: str = setting("auto", "'device': all images on the training device; 'host': (memory-mapped) host "
                             "memory, copied per step and prefetched; 'auto': device when they take at most half "
                             "of its free memory", choices=("auto", "device", "host"), resume="free")


@dataclass
class ModelConfig:
    modality: str = setting("image", "what the model sees: a student sees 'image' or 'text', the teacher "
                            "'image+text'", choices=("image", "text", "image+text"))
    backbone: str = setting("conv4", "image encoder", choices=BACKBONES, read_when=IMAGE)
    head: str = setting("protonet", "few-shot head", choices=HEADS)
    text_encoder: str = setting("bow", "text encoder", choices=TEXT_ENCODERS, read_when=TEXT)
    text_dim: int = setting(128, "width of the text embedding", low=1, high=65536, read_when=TEXT)
    fusion: str = setting("gated", "how the teacher fuses image and text", choices=FUSIONS, read_when=TEACHER)
    modality_dropout: float = setting(0.0, "teacher training: share of episodes in which one modality (each half "
                                      "of the time) is hidden, so each stays discriminative alone",
                                      low=0, high=1, read_when=TEACHER)
    branch_loss: float = setting(0.0, "late fusion: weight of each modality's own episode loss beside the fused "
                                 "one", low=0, high=1e6, read_when=("model.fusion", ("late",)))
    embed_dim: int = setting(256, "width of the fused (teacher) embedding", low=1, high=65536, read_when=TEACHER)
    word_dropout: float = setting(0.0, "share of caption words dropped while training", low=0, high=0.99,
                                  read_when=TEXT)
    dropblock: float = setting(0.0, "ResNet-12 DropBlock rate in the last two blocks", low=0, high=0.99,
                               read_when=("model.backbone", ("resnet12",)))
    fce: bool = setting(False, "MatchingNet full-context embeddings", read_when=("model.head", ("matchingnet",)))
    relation_loss: str = setting("mse", "RelationNet loss: 'mse' to one-hot (the paper) or 'ce'",
                                 choices=("mse", "ce"), read_when=("model.head", ("relationnet",)))
    feat_reg: float = setting(0.1, "FEAT: weight of the contrastive regulariser", low=0, high=1e6,
                              read_when=("model.head", ("feat",)))


@dataclass
class EpisodeConfig:
    way: int = setting(5, "classes per episode", low=2, high=10**6)
    shot: int = setting(1, "labelled support samples per class", low=1, high=10**6)
    query: int = setting(15, "query samples per class", low=1, high=10**6)


@dataclass
class TrainConfig:
    episodes: int = setting(1500, "training episodes in all (over all processes); a resumed run may add more",
                            low=1, high=10**9, resume="grow")
    budget: str = setting("fixed", "'fixed': train.episodes; 'plateau': train.episodes, then double it until one more "
                          "doubling raises the best validation accuracy by less than train.plateau_gain points "
                          "(each budget a run of its own, cosine schedule included)", choices=("fixed", "plateau"),
                          resume="fixed")
    plateau_gain: float = setting(0.5, "budget=plateau: the gain (accuracy points) below which one more doubling "
                                  "is not worth it (negative: double up to train.max_episodes)", low=-100, high=100,
                                  read_when=("train.budget", ("plateau",)))
    max_episodes: int = setting(153600, "budget=plateau: the largest budget tried", low=1, high=10**9,
                                read_when=("train.budget", ("plateau",)))
    episodes_per_step: int = setting(1, "episodes batched in one forward (fills a GPU)", low=1, high=4096)
    fine_grained_share: float = setting(0.0, "share of training episodes drawn fine-grained (all classes from "
                                        "one group)", low=0, high=1)
    optimizer: str = setting("adam", "'adam' or 'sgd' (Nesterov momentum 0.9)", choices=("adam", "sgd"))
    lr: float = setting(1e-3, "learning rate at the start of the schedule", low=0, high=100, above=True)
    weight_decay: float = setting(0.0, "L2 penalty of the optimizer", low=0, high=1)
    schedule: str = setting("cosine", "learning-rate schedule over the episodes", choices=("cosine", "step", "none"))
    step_size: int = setting(500, "episodes between learning-rate drops", low=1, high=10**9,
                             read_when=("train.schedule", ("step",)))
    gamma: float = setting(0.5, "factor of each learning-rate drop", low=0, high=1, above=True,
                           read_when=("train.schedule", ("step",)))
    val_every: int = setting(100, "episodes between validations (and checkpoints)", low=1, high=10**9)
    val_episodes: int = setting(200, "fixed val episodes scored at each validation", low=1, high=100000)
    val_query: int = setting(15, "queries per class in the val episodes", low=1, high=1000)
    val_fine_grained: bool = setting(False, "draw the val episodes fine-grained (all classes from one group), as "
                                     "fine-grained benchmarks report; they then pick the best checkpoint and decide "
                                     "train.budget=plateau and distill.while_teacher_leads")
    tensorboard: bool = setting(False, "also log to <run>/tensorboard (needs the tensorboard package)",
                                resume="free")
    channels_last: bool = setting(True, "channels-last memory format (measured faster for Conv-4 on CPUs)")
    precision: str = setting("auto", "encoder precision: 'fp32', 'bf16', 'fp16' (autocast) or 'auto' (bf16 on "
                             "GPUs, fp32 on CPUs)", choices=("auto", "fp32", "bf16", "fp16"))
    compile: bool = setting(False, "torch.compile the training forward (pays off on GPUs for long runs)",
                            resume="free")
    seed: int = setting(0, "every random draw of the run derives from it", low=0, high=2**31 - 1)
    threads: int = setting(0, "CPU threads (0: all cores)", low=0, high=1024, resume="free")
    pretrain_epochs: int = setting(0, "many-way classification epochs on base classes before the episodes "
                                   "(FEAT, Meta-Baseline)", low=0, high=10000)
    pretrain_lr: float = setting(0.05, "pre-training learning rate (SGD, cosine)", low=0, high=100, above=True,
                                 read_when=("train.pretrain_epochs", "positive"))
    pretrain_batch: int = setting(128, "pre-training batch size", low=1, high=65536,
                                  read_when=("train.pretrain_epochs", "positive"))


@dataclass
class SRLConfig:
    """The Spatial Relation Loss (Zhao et al., ICASSP 2021), as :mod:`cmkd.losses.srl` computes it:
    ``rel * L_rel + dist * L_dist + angle * L_angle``."""

    rel: float = setting(1.0, "weight of the relation term: KL between teacher and student relation distributions",
                         low=0, high=1e6)
    dist: float = setting(1.0, "weight of the scale-free pairwise-distance structure (RKD's distance term)",
                          low=0, high=1e6)
    angle: float = setting(0.0, "weight of the triplet-angle structure (RKD's angle term)", low=0, high=1e6)
    tau: float = setting(1.0, "temperature of the relation distributions (of standardised scores)", low=0,
                         high=1e6, above=True)
    standardise: str = setting("episode", "relation scores standardised with one scale per 'episode', per "
                               "'query', or 'none' (raw head scores, whose scale differs per head)",
                               choices=("episode", "query", "none"))
    correct_only: bool = setting(False, "relation term only on queries the teacher classifies correctly")
    student_inputs: str = setting("clean", "the student's side of the SRL from an extra forward on the teacher's "
                                  "'clean' inputs, or from its training forward ('same': augmented, one caption)",
                                  choices=("clean", "same"))
    queries: int = setting(0, "queries per class the SRL relates to the supports (the first of each class's "
                           "randomly drawn queries; 0: all of the episode's); fewer make its clean view's second "
                           "forward cheaper", low=0, high=10**6)


@dataclass
class KDConfig:
    """Hinton et al. (2015): KL between temperature-softened episode logits."""

    tau: float = setting(4.0, "temperature of Hinton KD on raw episode logits", low=0, high=1e6, above=True)


@dataclass
class RKDConfig:
    """Relational KD (Park et al., CVPR 2019): distance and angle structure."""

    dist: float = setting(1.0, "weight of the distance term", low=0, high=1e6)
    angle: float = setting(2.0, "weight of the angle term", low=0, high=1e6)


DISTILLING = ("command", ("distill",))


@dataclass
class DistillConfig:
    teacher: str | None = setting(None, "path of a teacher run (or its checkpoint); several, comma-separated: "
                                  "their ensemble (the mean of their scores) teaches", resume="free",
                                  read_when=DISTILLING)
    method: str = setting("srl", "distillation method", choices=METHODS, read_when=DISTILLING)
    weight: float = setting(4.0, "lambda in: loss = model loss + lambda * distillation loss", low=0, high=1e6,
                            read_when=DISTILLING)
    warmup: float = setting(0.0, "share of training over which lambda ramps up linearly from 0", low=0, high=1,
                            read_when=DISTILLING)
    until: float = setting(1.0, "share of training after which the student trains alone (lambda 0): distil early, "
                           "let the student fit its own labels late (1: distil to the end)", low=0, high=1, above=True,
                           read_when=DISTILLING)
    every: int = setting(1, "distil on every N-th step only, with N times the weight: the same expected gradient "
                         "for 1/N of the distillation's cost (the SRL's clean view is a second student forward)",
                         low=1, high=10**6, read_when=DISTILLING)
    episodes: str = setting("all", "which training episodes distil: 'all', or 'fine': only the fine-grained ones "
                            "(train.fine_grained_share of them, with 1/share times the weight), where the classes "
                            "look alike and the teacher's lead lies", choices=("all", "fine"), read_when=DISTILLING)
    clean_steps: bool = setting(False, "an image student trains on the clean (un-augmented) images on its "
                                "distillation steps, so the SRL's clean view is its training forward: no second "
                                "forward, and 1 in distill.every steps unaugmented", read_when=DISTILLING)
    while_teacher_leads: bool = setting(False, "distil only while the teacher leads: after each validation the "
                                        "next steps distil if the teacher's accuracy on the same val episodes is "
                                        "above the student's, else they are plain steps (a student that has "
                                        "outgrown its teacher trains alone)", read_when=DISTILLING)
    init_encoder: bool = setting(False, "start the student's encoder (image or text) from the teacher's encoder of "
                                 "that modality, with the same architecture; the head starts fresh",
                                 read_when=DISTILLING)
    teacher_inputs: str = setting("clean", "'clean': the teacher embeds un-augmented samples (all captions "
                                  "averaged), once, cached; 'same': it sees the student's training inputs",
                                  choices=("clean", "same"), read_when=DISTILLING)
    srl: SRLConfig = section(SRLConfig, "method srl", read_when=("distill.method", ("srl",)))
    kd: KDConfig = section(KDConfig, "method kd", read_when=("distill.method", ("kd",)))
    rkd: RKDConfig = section(RKDConfig, "method rkd", read_when=("distill.method", ("rkd",)))


@dataclass
class LSLConfig:
    """Language-shaped learning (Mu et al., ACL 2020): the student's embedding must also let a caption
    decoder generate the sample's captions, during training only."""

    weight: float = setting(0.0, "weight of the caption decoder's loss (0: off; the paper used about 5)",
                            low=0, high=1e6)
    hidden: int = setting(200, "width of the decoder's GRU", low=1, high=65536, read_when=("lsl.weight", "positive"))
    word_dim: int = setting(128, "width of its word embeddings", low=1, high=65536,
                            read_when=("lsl.weight", "positive"))


@dataclass
class Config:
    name: str = setting("run", "run name: the run folder is <out>/<name>", resume="free")
    out: str = setting("runs", "folder that holds the run folders", resume="free")
    data: DataConfig = section(DataConfig, "the dataset and how it is fed")
    model: ModelConfig = section(ModelConfig, "the few-shot model")
    episode: EpisodeConfig = section(EpisodeConfig, "training episodes")
    train: TrainConfig = section(TrainConfig, "optimisation, validation, precision, seed")
    distill: DistillConfig = section(DistillConfig, "distillation from a teacher (cmkd distill)",
                                     read_when=DISTILLING)
    lsl: LSLConfig = section(LSLConfig, "language-shaped learning")

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- the schema, read from the dataclasses -------------------------------------------------------

@dataclass(frozen=True)
class Key:
    """One config key: its dotted name, type, default and schema."""

    name: str
    type: Any
    default: Any
    help: str
    fixed_choices: tuple[str, ...] | None
    range: tuple[float | None, float | None, bool]
    resume: str
    read_when: tuple[ReadWhen, ...]  # all must hold (the key's own and its sections')
    registry: Registry | None = None  # where the choices come from, with a line of help each

    @property
    def choices(self) -> tuple[str, ...] | None:
        """The allowed values; a registry's names as they are now (parts registered later included)."""
        return self.registry.names if self.registry is not None else self.fixed_choices


@cache
def schema() -> dict[str, Key]:
    """Every key of :class:`Config` (``section.key``, ``distill.srl.tau``) in declaration order."""
    out: dict[str, Key] = {}

    def walk(cls: type, prefix: str, conditions: tuple[ReadWhen, ...]) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            name, meta = prefix + f.name, f.metadata
            own = conditions + ((meta["read_when"],) if meta.get("read_when") else ())
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], name + ".", own)
                continue
            choices = meta.get("choices")
            registry = choices if isinstance(choices, Registry) else None
            out[name] = Key(name, hints[f.name], f.default, meta["help"],
                            None if registry is not None else choices,
                            meta.get("range", (None, None, False)), meta.get("resume", "fixed"), own, registry)

    walk(Config, "", ())
    return out


def choices(key: str) -> tuple[str, ...]:
    """The allowed values of a key with choices (the command line's flags use them)."""
    found = schema()[key].choices
    assert found is not None, f"{key} has no choices"
    return found


def _coerce(key: Key, value: Any) -> Any:
    """``value`` as ``key``'s type, or a :class:`ConfigError` naming the key."""
    kind, optional = key.type, False
    if isinstance(kind, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        kind, optional = args[0], len(args) < len(typing.get_args(kind))
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config field '{key.name}' takes {_type_word(kind)}, got null; it has no 'unset' value "
                          f"(default {key.default!r})")
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config field '{key.name}' takes true or false, got {value!r}")
        return value
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"config field '{key.name}' takes {_type_word(kind)}, got {value!r}")
        try:
            number = float(value) if isinstance(value, str) else value
        except ValueError:
            raise ConfigError(f"config field '{key.name}' takes a number, got {value!r}") from None
        if kind is int:
            if not isinstance(number, int) and not (math.isfinite(number) and number == int(number)):
                raise ConfigError(f"config field '{key.name}' takes a whole number, got {value!r}")
            return int(number)
        return float(number)
    if not isinstance(value, str):
        quote = (f"; quote it to mean text: {key.name}=\"'{value}'\"" if isinstance(value, (int, float))
                 else f" ({key.help})" if isinstance(value, list) else "")
        raise ConfigError(f"config field '{key.name}' takes text, got {value!r}{quote}")
    return value


def _type_word(kind: Any) -> str:
    return {int: "a whole number", float: "a number", bool: "true or false", str: "text"}.get(kind, str(kind))


def _build(cls: type, values: Any, prefix: str, root: str = "") -> Any:
    """``cls`` from ``values``; errors name ``prefix + key``, the schema is read at ``root + key``."""
    if not isinstance(values, dict):
        raise ConfigError(f"config field '{prefix.rstrip('.') or 'root'}' must be a mapping of keys, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    obj = cls()
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(_unknown(path, prefix, list(fields)))
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            setattr(obj, key, _build(type(current), value, f"{path}.", f"{root}{key}."))
        elif isinstance(value, dict):
            raise ConfigError(f"config field '{path}' is a value, not a section; got {value!r}")
        else:
            setattr(obj, key, _coerce(dataclasses.replace(schema()[root + key], name=path), value))
    return obj


#: Keys that no longer exist, and what replaced them (run folders of earlier versions are upgraded).
RENAMED = {**{f"distill.{k}": f"distill.srl.{k}" for k in ("tau", "rel", "dist", "angle", "standardise",
                                                          "correct_only", "student_inputs")},
           "distill.kd_tau": "distill.kd.tau"}
REMOVED = {"episode.fine_grained": "training draws fine-grained episodes with train.fine_grained_share; "
                                   "evaluation with cmkd evaluate --fine-grained"}


def _unknown(path: str, prefix: str, valid: list[str]) -> str:
    if path in RENAMED:
        return f"config key '{path}' is now '{RENAMED[path]}'; rename it"
    if path in REMOVED:
        return f"config key '{path}' does not exist: {REMOVED[path]}"
    near = difflib.get_close_matches(path.rsplit(".", 1)[-1], valid, n=1)
    hint = f" (did you mean '{prefix}{near[0]}'?)" if near else ""
    return f"unknown config key '{path}'{hint}; valid keys here: {', '.join(valid)}"


def upgrade(tree: dict[str, Any]) -> dict[str, Any]:
    """A stored config (a run folder's ``config.json``) of an earlier cmkd in today's key names; keys that did
    not exist then take their defaults, which reproduce the earlier behaviour (RKD's weights 1 and 2)."""
    flat = flatten(tree)
    for old, new in RENAMED.items():
        if old in flat:
            flat[new] = flat.pop(old)
    for old in REMOVED:
        flat.pop(old, None)
    out = Config().to_dict()
    for key, value in flat.items():
        _set_dotted(out, key, value)
    return out


def build_section(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """A section of the config (e.g. :class:`ModelConfig`) from a mapping, each key, type, choice and range
    checked; errors name ``prefix + key``."""
    root = next(f.name for f in dataclasses.fields(Config) if f.default_factory is cls) + "."
    obj = _build(cls, values, prefix, root)
    for f in dataclasses.fields(cls):
        _check_value(dataclasses.replace(schema()[root + f.name], name=prefix + f.name), getattr(obj, f.name))
    return obj


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
    try:
        return key.strip(), yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"override {text!r}: the value is not a YAML scalar; quote text that holds ':', '[' "
                          "or '{'") from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: dict[str, Any] | None = None, flags: dict[str, Any] | None = None,
                command: str | None = None) -> Config:
    """The effective config. Each layer overrides the ones before it:

    defaults < ``base`` (a caller's own defaults) < the YAML file at ``path`` < ``flags``
    (dotted keys set by command-line flags the user typed) < ``key=value`` ``overrides``.
    ``command`` (``train``, ``distill``) refuses keys that command does not read.
    """
    tree: dict[str, Any] = {}
    for key, value in (base or {}).items():
        _set_dotted(tree, key, value)
    if path is not None:
        _merge(tree, read_yaml(resolve_config(path)))
    for key, value in (flags or {}).items():
        _set_dotted(tree, key, value)
    for item in overrides:
        _set_dotted(tree, *parse_override(item))
    cfg = _build(Config, tree, "", "")
    validate(cfg)
    check_read(cfg, set(flatten(tree)), command)
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice in one section",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}  # noqa: S506 (safe)
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
    return loaded


def value_of(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _holds(cfg: Config, condition: ReadWhen, command: str | None) -> bool:
    key, allowed = condition
    if key == "command":
        return command is None or command in allowed
    value = value_of(cfg, key)
    return value > 0 if allowed == "positive" else value in allowed


def read_keys(cfg: Config, section: str) -> list[str]:
    """The keys of ``section`` that something reads with this config (``model.fce`` only for MatchingNet, ...)."""
    return [n for n, k in schema().items() if n.startswith(section + ".")
            and all(_holds(cfg, c, None) for c in k.read_when)]


#: Conditions under which an unread key is refused. Model keys (``fce`` for a ProtoNet, text keys for an image
#: student) are allowed: one config may serve both directions (``--modality``); ``cmkd config keys`` lists
#: when each is read.
ENFORCED = ("command", "distill.method", "train.budget")


def check_read(cfg: Config, given: set[str], command: str | None = None) -> None:
    """Refuse a key that was set but that the chosen command or distillation method does not read
    (``distill.srl.tau`` with method kd, any ``distill.*`` key for ``cmkd train``), naming what reads it."""
    for name in sorted(given):
        key = schema().get(name)
        if key is None:
            continue
        for condition in key.read_when:
            if condition[0] in ENFORCED and not _holds(cfg, condition, command):
                cond_key, allowed = condition
                if cond_key == "command":
                    hint = ("`cmkd train` trains without a teacher; distil with `cmkd distill --teacher RUN`, or "
                            "remove the distill section (a shipped *_distill config is for cmkd distill)")
                    raise ConfigError(f"config key '{name}' is read only by `cmkd distill`: {hint}")
                want = "greater than 0" if allowed == "positive" else " or ".join(map(str, allowed))
                raise ConfigError(f"config key '{name}' is read only when {cond_key} is {want} (it is "
                                  f"{value_of(cfg, cond_key)!r}); remove it or set {cond_key}")


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
    """Every config key with its default and a line of help (with its choices or range)."""
    out = {}
    for name, key in schema().items():
        extra = []
        if key.registry is not None:
            extra.append("one of " + "; ".join(f"{n}: {e.help}" for n, e in key.registry.entries.items()))
        elif key.choices:
            extra.append("one of " + ", ".join(key.choices))
        low, high, above = key.range
        if low is not None:
            extra.append(f"{'>' if above else '>='} {low:g}" + (f", <= {high:g}" if high is not None else ""))
        if key.read_when:
            extra.append("read when " + " and ".join(
                f"{k} {'> 0' if v == 'positive' else 'in ' + '/'.join(map(str, v))}" for k, v in key.read_when))
        out[name] = (key.default, key.help + (f" [{'; '.join(extra)}]" if extra else ""))
    return out


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def check_name(value: str, field: str) -> None:
    """A run or dataset name is one plain folder name: no separators, no '..', no control characters."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{field} {value!r} is not valid UTF-8 text; choose a name in plain text") from None
    if (not value or value in (".", "..") or "/" in value or "\\" in value
            or any(ord(ch) < 32 for ch in value)):
        raise ConfigError(f"{field} {value!r} must be a plain folder name (no '/', '\\', '..' or control "
                          "characters); write outputs elsewhere with out=DIR")


def validate(cfg: Config) -> None:
    """Check every key's choices and range, and the run name; raise :class:`ConfigError` naming the key."""
    for name, key in schema().items():
        _check_value(key, value_of(cfg, name))
    check_name(cfg.name, "config field 'name'")
    if cfg.train.episodes_per_step > cfg.train.episodes:
        raise ConfigError(f"config field 'train.episodes_per_step' ({cfg.train.episodes_per_step}) is more than "
                          f"train.episodes ({cfg.train.episodes}); batch at most the episodes the run trains")
    if cfg.distill.clean_steps and cfg.model.modality != "image":
        raise ConfigError(f"config field 'distill.clean_steps' is for image students (their clean view is the "
                          f"un-augmented image), not model.modality={cfg.model.modality}; unset it")
    if cfg.distill.srl.queries > cfg.episode.query:
        raise ConfigError(f"config field 'distill.srl.queries' ({cfg.distill.srl.queries}) is more than "
                          f"episode.query ({cfg.episode.query}); relate at most the episode's queries (0: all)")


def _check_value(key: Key, value: Any) -> None:
    if key.choices is not None and value not in key.choices:
        raise ConfigError(f"config field '{key.name}' is {value!r}; choose one of {', '.join(key.choices)}")
    low, high, above = key.range
    if low is None or value is None:
        return
    if not math.isfinite(value):
        raise ConfigError(f"config field '{key.name}' must be a finite number, got {value}")
    if value < low or (value == low and above) or (high is not None and value > high):
        bound = f"{'greater than' if above else 'at least'} {low}" + (f" and at most {high}" if high is not None
                                                                       else "")
        raise ConfigError(f"config field '{key.name}' must be {bound}, got {value}")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config tree (as ``Config.to_dict`` writes it) as ``{'section.key': value}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resume_conflicts(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Differences a resumed run may not have, between a stored run's config (upgraded to today's
    keys) and a new one, as ``'field: old -> new'`` lines (empty when the new config may continue it)."""
    a, b = flatten(upgrade(old)), flatten(new)
    out = []
    for name in sorted(set(a) | set(b)):
        rule = schema()[name].resume if name in schema() else "fixed"
        if rule == "free":
            continue
        if rule == "grow":
            if b.get(name, 0) < a.get(name, 0):
                out.append(f"{name}: {a[name]} -> {b[name]} (it may only grow)")
        elif a.get(name, "<unset>") != b.get(name, "<unset>"):
            out.append(f"{name}: {a.get(name, '<unset>')!r} -> {b.get(name, '<unset>')!r}")
    return out
