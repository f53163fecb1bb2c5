"""The ``cmkd`` command line: prepare, datasets, train, distill, evaluate, predict, export, config, demo."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from cmkd.config import SPLITS, Config, DataConfig, check_name, choices, load_config
from cmkd.errors import USER_ERRORS, ConfigError, DatasetError, ImageError

if TYPE_CHECKING:
    import torch

    from cmkd.models.fewshot import FewShotModel

#: Command-line flags that set a config field: flag attribute -> dotted key.
CONFIG_FLAGS = {"name": "name", "modality": "model.modality", "method": "distill.method",
                "teacher": "distill.teacher"}


def _config(args: argparse.Namespace) -> Config:
    """The effective config: defaults < ``--config`` file < flags the user typed < ``key=value``."""
    flags = {key: str(getattr(args, attr)) for attr, key in CONFIG_FLAGS.items()
             if getattr(args, attr, None) is not None}
    return load_config(args.config, args.overrides, flags=flags, command=args.command)


def _print_config(cfg: Config) -> None:
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")


def _report(trainer) -> None:
    cfg, e = trainer.cfg, trainer.cfg.episode
    if trainer.ranks.main:
        print(f"best val accuracy {100 * trainer.best_acc:.2f}% ({e.way}-way {e.shot}-shot, {cfg.train.episodes} "
              f"episodes); weights in {cfg.run_dir}"
              + (f" ({trainer.ranks.world} processes)" if trainer.ranks.world > 1 else ""))


def _check_run_folder(cfg: Config, args: argparse.Namespace) -> None:
    from cmkd.run_folder import RunDirectory

    if args.resume and args.overwrite:
        raise ConfigError("--resume continues the run and --overwrite replaces it; choose one")
    folder = RunDirectory(cfg.run_dir)
    if args.resume and not folder.has_run():
        raise ConfigError(f"--resume: {cfg.run_dir} holds no run to resume (check --name and out=); drop --resume "
                          "to start a new run")
    folder.check(args.resume, args.overwrite)


def cmd_train(args: argparse.Namespace) -> None:
    cfg = _config(args)
    if args.print_config:
        return _print_config(cfg)
    from cmkd import distributed
    from cmkd.data.registry import load_dataset
    from cmkd.runtime import configure_cpu

    _check_run_folder(cfg, args)  # before any data is loaded
    configure_cpu(cfg.train.threads)
    _report(_fit(cfg, args, load_dataset(cfg.data), distributed.setup(args.device)))


def _fit(cfg: Config, args: argparse.Namespace, dataset, device, teacher=None, init=None):
    """Train ``cfg`` (to its plateau with ``train.budget=plateau``); returns the trainer of the kept run."""
    from cmkd.train.loop import Trainer
    from cmkd.train.plateau import fit_to_plateau

    made: list[Trainer] = []

    def make(c: Config) -> Trainer:  # every budget of a plateau search shares one teacher pass, made at first use
        cache = made[-1].teacher_cache if made else None
        made[:] = [Trainer(c, dataset, device, teacher=teacher, init=init, teacher_cache=cache)]
        return made[0]

    if cfg.train.budget == "plateau":
        return fit_to_plateau(cfg, make, args.resume, args.overwrite)
    trainer = make(cfg)
    trainer.fit(resume=args.resume, overwrite=args.overwrite)
    return trainer


def cmd_distill(args: argparse.Namespace) -> None:
    cfg = _config(args)
    if args.print_config:
        return _print_config(cfg)
    from cmkd import distributed
    from cmkd.checkpoint import load_model, load_teacher
    from cmkd.data.registry import load_dataset
    from cmkd.runtime import configure_cpu
    from cmkd.train.distiller import check_teacher_images

    if cfg.distill.teacher is None:
        raise ConfigError("distill needs a teacher: pass --teacher RUN or set distill.teacher in the config")
    if cfg.model.modality == "image+text":
        raise ConfigError("model.modality: a distilled student sees one modality; use image or text")
    _check_run_folder(cfg, args)  # before the teacher and data are loaded
    configure_cpu(cfg.train.threads)
    device = distributed.setup(args.device)
    teacher, metas = load_teacher(cfg.distill.teacher, device)
    if teacher.cfg.modality == cfg.model.modality and not args.same_modality:
        raise ConfigError(f"the teacher at {cfg.distill.teacher} sees only {teacher.cfg.modality}; CMKD needs a "
                          "teacher with the other modality too (train one with --modality image+text), or pass "
                          "--same-modality to distil from it as a self-distillation control")
    init = load_model(args.init, device)[0] if args.init else None
    dataset = load_dataset(cfg.data)
    check_teacher_images(teacher, dataset)
    for meta in metas:
        _check_teacher_data(meta, cfg.data, dataset)
    _report(_fit(cfg, args, dataset, device, teacher, init))


#: Of the data settings that make a dataset (``CONTENT_KEYS``), those that change the classes and text a teacher
#: reads: refused when they differ from its training data (the others, the pixels, get a warning).
_TEACHER_READS = ("dataset", "captions")


def _check_teacher_data(meta: dict, data: DataConfig, dataset) -> None:
    """The teacher embeds the student's data: refuse other classes or text than it was trained on; warn
    about other pixels or a dataset prepared again since."""
    from cmkd.data.registry import CONTENT_KEYS

    if meta.get("dataset_sha256") in (None, dataset.content_digest()):
        return  # the very data it was trained on (or a checkpoint too old to say)
    theirs = {**dataclasses.asdict(DataConfig()), **meta.get("config", {}).get("data", {})}
    ours = dataclasses.asdict(data)
    for d in (theirs, ours):
        d["dataset"] = _dataset_key(d["dataset"])
    run = meta.get("loaded_from", "the teacher")
    if differ := [k for k in _TEACHER_READS if theirs[k] != ours[k]]:
        fix = (f"train a teacher on data.dataset={data.dataset}" if "dataset" in differ else
               f"give the student data.captions={theirs['captions']} too (an image student never reads captions; "
               "the teacher does)")
        raise ConfigError(f"the teacher {run} was trained with " + ", ".join(f"data.{k}={theirs[k]}" for k in differ)
                          + " but the student's data has " + ", ".join(f"data.{k}={ours[k]}" for k in differ)
                          + f": the teacher would read classes or captions it never saw; {fix}")
    differ = [k for k in CONTENT_KEYS if k not in _TEACHER_READS and theirs[k] != ours[k]]
    logging.getLogger("cmkd").warning(
        "the teacher %s was trained on other data than the student's (%s); it embeds the student's", run,
        ", ".join(f"data.{k}={theirs[k]}, student {ours[k]}" for k in differ) if differ
        else "the dataset was prepared again since")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from cmkd import distributed
    from cmkd.data.device import DeviceData
    from cmkd.data.episodes import EpisodeSetting
    from cmkd.data.registry import load_dataset
    from cmkd.eval.compare import compare, table, write_json
    from cmkd.run_folder import ensure_writable_folder
    from cmkd.runtime import configure_cpu, resolve_precision

    configure_cpu()
    _check_evaluate_args(args)
    ensure_writable_folder(args.out.parent)  # before any model is scored
    device = distributed.setup(args.device)
    models: dict[str, list] = {}
    metas: dict[str, dict] = {}
    notes: list[str] = []
    for spec in args.runs:
        name, _, paths = spec.partition("=") if "=" in spec else (Path(spec).name, "", spec)
        loaded = [_load_run(p, device) for p in paths.split(",") if p]
        if not loaded:
            raise ConfigError(f"evaluate: {spec!r} names no run; write NAME=RUN[,RUN...] (RUN1+RUN2: their ensemble)")
        if name in models:
            raise ConfigError(f"evaluate: the method name {name!r} is given twice; name each method once "
                              "(several runs of one method: NAME=RUN1,RUN2)")
        loaded = _distinct_runs(name, loaded, notes)
        models[name] = [m for _, m, _ in loaded]
        metas.update({f"{name}[{i}]": meta for i, (_, _, meta) in enumerate(loaded)})
    if args.reference is not None and args.reference not in models:
        raise ConfigError(f"evaluate: --reference {args.reference!r} is none of the methods ({', '.join(models)})")
    data_cfg = _shared_data(metas)
    dataset = load_dataset(data_cfg)
    notes += _dataset_changes(dataset, metas)
    data = DeviceData(dataset, device, args.placement)
    shots = args.shots or [1, 5]
    settings = [EpisodeSetting(args.way, s, args.query, fg) for fg in (False, True) for s in shots]
    if not args.fine_grained:
        settings = [s for s in settings if not s.fine_grained]
    names = list(models)
    pairs = [(n, args.reference or names[0]) for n in names if n != (args.reference or names[0])]
    ranks, precision = distributed.ranks(), resolve_precision(args.precision, device)
    result = compare(models, data, settings, args.split, args.episodes, args.seed, pairs,
                     data_cfg.eval_captions == "mean", ranks.main, precision)
    result["precision"], result["processes"] = precision, ranks.world
    result["checkpoints"] = {run: meta["loaded_from"] for run, meta in metas.items()}  # .prev when it fell back
    result["notes"] = notes
    if not ranks.main:
        return
    out = write_json(result, args.out)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(table(result))
    print(f"\nresults: {out}")


def _check_evaluate_args(args: argparse.Namespace) -> None:
    for flag, value, low, high in (("--episodes", args.episodes, 1, 100000), ("--way", args.way, 2, 10**6),
                                   ("--query", args.query, 1, 10**6), ("--seed", args.seed, 0, 2**31 - 1),
                                   *(("--shots", s, 1, 10**6) for s in args.shots or [])):
        if not low <= value <= high:
            raise ConfigError(f"evaluate: {flag} {value} must be from {low} to {high}")
    if args.out.is_dir():
        raise ConfigError(f"evaluate: --out {args.out} is a folder; name the results file "
                          f"(e.g. {args.out / 'evaluation.json'})")


def _load_run(path: str, device: torch.device) -> tuple[str, FewShotModel, dict]:
    """A run folder or checkpoint, or ``RUN1+RUN2+...``: those runs as one :class:`TeacherEnsemble` (a path
    that exists is read as one run, even with a '+' in its name)."""
    from cmkd.checkpoint import load_model
    from cmkd.models.ensemble import TeacherEnsemble

    if "+" not in path or Path(path).exists():
        return (path, *load_model(path, device))
    parts = path.split("+")
    if not all(parts):
        raise ConfigError(f"evaluate: {path!r} has an empty name (a stray '+'); write RUN1+RUN2 for an ensemble")
    members = [load_model(p, device) for p in parts]
    _shared_data({f"{path}[{i}]": meta for i, (_, meta) in enumerate(members)})  # one dataset, size, captions
    first = members[0][1]
    weights = hashlib.sha256("+".join(meta.get("weights_sha256") or "" for _, meta in members).encode())
    meta = {**first, "weights_sha256": weights.hexdigest(),
            "loaded_from": "+".join(meta["loaded_from"] for _, meta in members)}
    return path, TeacherEnsemble([m for m, _ in members]).eval(), meta


def _role(meta: dict) -> dict:
    """What makes runs comparable as seeds of one method: the model, the distillation and the data."""
    cfg = meta.get("config", {})
    distilled = meta.get("teacher_sha256") is not None
    return {"model": meta.get("spec", {}).get("model"), "in": [meta.get("spec", {}).get(k) for k in
                                                               ("in_channels", "image_size")],
            "method": cfg.get("distill", {}).get("method") if distilled else "none",
            "lsl": cfg.get("lsl", {}).get("weight", 0.0), "data": cfg.get("data", {}).get("dataset")}


def _distinct_runs(name: str, loaded: list, notes: list[str]) -> list:
    """The runs of one method: refused when they differ in model, method or data; identical weights once."""
    first_path, _, first_meta = loaded[0]
    first = _role(first_meta)
    out: list = []
    seen: dict = {}
    for path, model, meta in loaded:
        role = _role(meta)
        if role != first:
            diff = {k: (v, role[k]) for k, v in first.items() if role[k] != v}
            raise ConfigError(f"evaluate: {name} pools {first_path} and {path}, which are not runs of one method "
                              f"(differ in {', '.join(f'{k}: {a!r} vs {b!r}' for k, (a, b) in diff.items())}); "
                              "give each its own NAME=")
        weights = meta.get("weights_sha256")
        if weights in seen:
            notes.append(f"{name}: {path} holds the same weights as {seen[weights]}; counted once")
            continue
        seen[weights] = path
        out.append((path, model, meta))
    return out


def _dataset_changes(dataset, metas: dict[str, dict]) -> list[str]:
    """Notes for runs trained on other content under the dataset's name; runs that cannot read its images
    (another channel count or size) are refused."""
    c, h, _ = dataset.image_shape
    for run, m in metas.items():
        spec = m.get("spec", {})
        if "image" in spec.get("model", {}).get("modality", "") and (spec.get("in_channels"), spec.get("image_size")) \
                != (c, h):
            raise ConfigError(f"evaluate: {run} was trained on {spec.get('in_channels')}-channel "
                              f"{spec.get('image_size')}px images, but {dataset.name} now has {c}-channel {h}px "
                              "images (prepared again?); prepare it as the run was trained, or retrain")
    digest = dataset.content_digest()
    return [f"{run} was trained on other content under the name {dataset.name!r} (the dataset was prepared "
            "again since); its scores are on today's data" for run, m in metas.items()
            if m.get("dataset_sha256") not in (None, digest)]


def _dataset_key(name: str) -> str:
    """A dataset named by name or by path, as the folder it resolves to (the embedded glyphs as themselves)."""
    from cmkd.data.registry import resolve

    folder = resolve(name) if name != "glyphs" else None
    return str(folder.resolve()) if folder is not None else name


def _shared_data(metas: dict[str, dict]) -> DataConfig:
    """The data config every run was trained on; refuses runs of different datasets, image sizes, channels or
    text (datasets compared by the folder they resolve to)."""
    keys = ("dataset", "image_size", "captions")
    seen = {}
    for run, m in metas.items():
        d = {k: m["config"]["data"].get(k, DataConfig.captions if k == "captions" else None) for k in keys}
        d["dataset"] = _dataset_key(d["dataset"])
        d["channels"] = m.get("spec", {}).get("in_channels")
        seen[run] = d
    first_run, first = next(iter(seen.items()))
    for run, data in seen.items():
        if data != first:
            raise ConfigError(f"evaluate: {run} was trained on {data} but {first_run} on {first}; runs compared "
                              "on the same episodes must share data.dataset, data.image_size and data.captions")
    return DataConfig(**next(iter(metas.values()))["config"]["data"])


def cmd_predict(args: argparse.Namespace) -> None:
    from cmkd.data.images import IMAGE_SUFFIXES
    from cmkd.predict import OneShotClassifier, captions_beside, read_support_folder
    from cmkd.runtime import configure_cpu, pick_device

    configure_cpu()
    clf = OneShotClassifier.load(args.model, pick_device(args.device))
    support, labels = read_support_folder(args.support)
    queries: list[Path] = []
    for q in args.query:
        if q.is_dir():
            queries += [f for f in sorted(q.rglob("*")) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        else:
            queries.append(q)
    if not queries:
        raise ImageError(f"no query images found in {', '.join(map(str, args.query))}")
    texts = None
    if clf.needs_text:
        texts = [captions_beside(p) for p in [*support, *queries]]
        missing = [str(p) for p, t in zip([*support, *queries], texts) if not t]
        if missing:
            raise ImageError(f"{args.model} sees {clf.model.cfg.modality} and needs a caption for every "
                             f"image; no <stem>.txt beside: {', '.join(missing[:3])}"
                             f"{' ...' if len(missing) > 3 else ''}. Use a student checkpoint for images alone")
    clf.fit(support, labels, texts[: len(support)] if texts else None)
    probs = clf.predict_proba(queries, texts[len(support):] if texts else None)
    rows, hits = [], []
    for path, p in zip(queries, probs):
        pred = clf.classes[int(p.argmax())]
        truth = path.parent.name if path.parent.name in clf.classes else None
        if truth is not None:
            hits.append(pred == truth)
        rows.append({"query": str(path), "predicted": pred, "label": truth,
                     "probabilities": {c: round(float(v), 4) for c, v in zip(clf.classes, p)}})
    accuracy = sum(hits) / len(hits) if hits else None
    if args.json:
        print(json.dumps({"model": str(args.model), "classes": clf.classes, "support_images": len(support),
                          "predictions": rows, "labelled_queries": len(hits), "accuracy": accuracy}, indent=1))
        return
    for r in rows:
        top = sorted(r["probabilities"].items(), key=lambda kv: -kv[1])[:3]
        mark = "" if r["label"] is None else ("  ✓" if r["predicted"] == r["label"] else f"  ✗ (is {r['label']})")
        print(f"{_printable(r['query'])}: {_printable(r['predicted'])}  ["
              + ", ".join(f"{_printable(c)} {v:.2f}" for c, v in top) + f"]{_printable(mark)}")
    if accuracy is not None:
        print(f"accuracy {100 * accuracy:.1f}% over {len(hits)} labelled queries "
              f"({len(clf.classes)} classes, {len(support)} support images)")


def _printable(text: str) -> str:
    """``text`` with control characters (a newline in a file name) escaped: one result per line."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], text)


def cmd_prepare(args: argparse.Namespace) -> None:
    from cmkd.data.cache import prepare
    from cmkd.data.formats.cub import list_cub
    from cmkd.data.formats.flowers import list_flowers
    from cmkd.data.formats.folder import list_folder
    from cmkd.data.formats.table import list_table
    from cmkd.data.registry import data_home
    from cmkd.run_folder import ensure_writable_folder

    if args.name is not None:
        check_name(args.name, "--name")
    if not 0 <= args.seed <= 2**31 - 1:
        raise ConfigError(f"--seed {args.seed} must be from 0 to {2**31 - 1}")
    ensure_writable_folder(args.out.parent if args.out else data_home())  # before decoding
    if args.format != "table" and (args.root is None or args.file is not None):
        raise ConfigError(f"prepare {args.format} reads --root (a folder), not --file; --file is for "
                          "prepare table")
    if args.format == "cub":
        listing = list_cub(args.root, args.captions, args.crop, args.split_file, args.skip_bad)
    elif args.format == "flowers":
        listing = list_flowers(args.root, args.captions, args.split_file, seed=args.seed)
    elif args.captions or args.crop or args.split_file:
        raise ConfigError(f"the {args.format} format keeps captions, splits and groups in its "
                          f"{'table' if args.format == 'table' else '--root'}; drop --captions/--crop/--split-file")
    elif args.format == "table":
        if args.file is None or args.root is not None:
            raise ConfigError("prepare table reads --file data.csv|data.jsonl (paths relative to its folder), "
                              "not --root")
        listing = list_table(args.file, seed=args.seed)
    elif args.root is not None and (args.root / "metadata.jsonl").is_file():  # the image folder + metadata.jsonl
        listing = list_table(args.root / "metadata.jsonl", seed=args.seed, label_from_folder=True)
    else:
        listing = list_folder(args.root, seed=args.seed)
    out = args.out or data_home() / (args.name or f"{args.format}_{args.size}")
    for w in listing.warnings:
        print(f"warning: {w}", file=sys.stderr)
    folder, built = prepare(listing, out, args.size, args.channels, args.workers, args.skip_bad)
    meta = json.loads((folder / "meta.json").read_text())
    state = "prepared" if built else "already up to date (inputs unchanged)"
    print(f"{folder}: {state}; {meta['images']} images, {len(meta['classes'])} classes, splits "
          f"{ {k: len(v) for k, v in meta['splits'].items()} }, {len(meta['skipped_bad'])} bad image(s) skipped")
    for bad in meta["skipped_bad"]:
        print(f"  skipped: {bad}")


def cmd_probe(args: argparse.Namespace) -> None:
    """Train the image, text and image+text models of one config and report what the text adds."""
    import dataclasses

    from cmkd import distributed
    from cmkd.data.device import DeviceData
    from cmkd.data.episodes import EpisodeSetting
    from cmkd.data.registry import load_dataset
    from cmkd.eval.compare import write_json
    from cmkd.eval.probe import PARTS, probe, table, verdict
    from cmkd.runtime import configure_cpu, provenance

    base = _config(args)
    if args.print_config:
        return _print_config(base)
    configs = {part: dataclasses.replace(base, out=str(base.run_dir), name=part.replace("+", "_"),
                                         model=dataclasses.replace(base.model, modality=part)) for part in PARTS}
    for cfg in configs.values():
        _check_run_folder(cfg, args)  # before any data is loaded
    configure_cpu(base.train.threads)
    device = distributed.setup(args.device)
    dataset = load_dataset(base.data)
    models = {}
    for part, cfg in configs.items():
        trainer = _fit(cfg, args, dataset, device)
        _report(trainer)
        models[part] = trainer.load_best()
    e = base.episode
    settings = [EpisodeSetting(e.way, e.shot, e.query)]
    if args.fine_grained:
        settings.append(EpisodeSetting(e.way, e.shot, e.query, fine_grained=True))
    result = probe(models, DeviceData(dataset, device), settings, args.split, args.episodes, args.seed,
                   base.data.eval_captions == "mean")
    result.update(dataset=dataset.name, runs={p: str(c.run_dir) for p, c in configs.items()},
                  train_episodes=base.train.episodes, budget=base.train.budget, provenance=provenance(device))
    out = write_json(result, args.out or base.run_dir / "probe.json")
    print("\n" + table(result) + "\n")
    for setting in result["settings"]:
        print(verdict(setting))
    print(f"\nresults: {out}")


def cmd_export(args: argparse.Namespace) -> None:
    from cmkd.deploy import export

    out = export(args.run, args.out, args.format, args.way)
    print(f"{out}: {args.format} graph (support [S, C, H, W] and query [Q, C, H, W] in [0, 1], support_labels [S] "
          "-> logits [Q, way])")


def cmd_datasets(args: argparse.Namespace) -> None:
    from cmkd.data.cache import load_prepared
    from cmkd.data.formats.glyphs import glyph_manifest
    from cmkd.data.registry import data_home, prepared_datasets

    m = glyph_manifest()
    c = m["counts"]
    info = {"glyphs": {"classes": c["classes"], "images": c["images"], "sizes": m["sizes"],
                       "groups": c["groups"], "splits": c["split_classes"], "captioned_images": c["images"],
                       "caption_coverage": 1.0,
                       "note": f"embedded; {c['faces']} font faces, renderings per class {c['renderings_per_class']}"}}
    broken = {}
    for name, folder, meta in prepared_datasets():
        try:
            if "error" in meta:
                raise DatasetError(meta["error"])
            s = load_prepared(folder, mmap=True).summary()  # counts only: no need to read the images
        except DatasetError as err:
            broken[name] = str(err)
            continue
        info[name] = {"classes": s["classes"], "images": s["images"], "sizes": [meta["size"]], "groups": s["groups"],
                      "splits": s["splits"], "captioned_images": s["captioned_images"],
                      "caption_coverage": s["caption_coverage"],
                      "note": f"{meta['format']} at {folder}, {len(meta['skipped_bad'])} bad images skipped"}
    if args.json:
        print(json.dumps({**info, **{n: {"error": e} for n, e in broken.items()}}, indent=1))
        return
    for name, error in broken.items():
        print(f"{name}: unusable: {error}", file=sys.stderr)
    for name, d in info.items():
        print(f"{name}: {d['classes']} classes, {d['images']} images, sizes {d['sizes']}, {d['groups']} groups, "
              f"splits {d['splits']}, captions on {d['captioned_images']} of {d['images']} images ({d['note']})")
    if len(info) == 1:
        print(f"(no prepared datasets in {data_home()}; `cmkd prepare` makes one)")


def cmd_config(args: argparse.Namespace) -> None:
    from cmkd.config import field_help, shipped_configs

    if args.action == "list":
        for name, path in shipped_configs().items():
            first = path.read_text().splitlines()[0].lstrip("# ")
            print(f"{name:22s} {first}")
    elif args.action == "keys":
        for key, (default, text) in field_help().items():
            print(f"{key:28s} {default!r:12s} {text}")
    else:
        overrides = list(args.overrides)
        name = args.name
        if name is not None and "=" in name:  # `cmkd config show train.lr=0.1`: no name, only overrides
            overrides, name = [name, *overrides], None
        _print_config(load_config(name, overrides))


def cmd_demo(args: argparse.Namespace) -> None:
    from cmkd.demo import run_demo
    from cmkd.runtime import configure_cpu, pick_device

    configure_cpu()
    run_demo(Path(args.out), quick=args.quick, with_baselines=not args.no_baselines, device=pick_device(args.device))


PRECEDENCE = "config precedence: defaults < --config file < flags you typed < section.key=value overrides"

#: A few examples per subcommand, shown under its --help (the top-level help shows the first of each).
EXAMPLES = {
    "train": ["cmkd train --config glyphs_teacher                         # a shipped config, by name",
              "cmkd train --config glyphs_student train.episodes=300 train.lr=0.001",
              "cmkd train --config glyphs_student train.budget=plateau    # double episodes until val stops gaining"],
    "distill": ["cmkd distill --config glyphs_distill --teacher runs/glyphs_teacher",
                "cmkd distill --config glyphs_distill --teacher runs/glyphs_teacher --modality text",
                "cmkd distill --config glyphs_distill --teacher runs/glyphs_teacher --method kd --name kd"],
    "evaluate": ["cmkd evaluate runs/glyphs_student runs/glyphs_distill --fine-grained",
                 "cmkd evaluate student=runs/s0,runs/s1,runs/s2 srl=runs/d0,runs/d1,runs/d2 --shots 1",
                 "cmkd evaluate ensemble=runs/t0+runs/t1+runs/t2 single=runs/t0 --fine-grained"],
    "predict": ["cmkd predict --model runs/glyphs_distill --support support/ --query photos/",
                "cmkd predict --model runs/glyphs_distill --support support/ --query q1.png q2.png --json"],
    "export": ["cmkd export runs/glyphs_distill --out student.onnx",
               "cmkd export runs/glyphs_distill --format pt2 --out student.pt2 --way 10   # torch.export.load"],
    "prepare": ["cmkd prepare cub --root CUB_200_2011 --captions text_c10 --size 84 --name cub_84",
                "cmkd prepare folder --root my_images/ --size 64 --name mine",
                "cmkd prepare table --file data.csv --size 64 --name mine      # path,label,caption[,group,split]"],
    "datasets": ["cmkd datasets", "cmkd datasets --json"],
    "config": ["cmkd config list", "cmkd config keys",
               "cmkd config show glyphs_teacher train.lr=0.01              # the effective config"],
    "demo": ["cmkd demo", "cmkd demo --quick --out /tmp/demo", "cmkd demo --device cuda"],
    "probe": ["cmkd probe --config glyphs_student --fine-grained        # will the captions help?",
              "cmkd probe --config mine.yaml train.budget=plateau          # each part trained to its plateau"],
}


def _epilog(command: str | None = None) -> str:
    if command is not None:
        lines = EXAMPLES[command]
        tail = f"\n\n{PRECEDENCE}" if command in ("train", "distill", "config") else ""
    else:
        lines = [e[0] for e in EXAMPLES.values()] + ["cmkd --import my_parts train model.backbone=mynet   # "
                                                     "your own registered parts"]
        tail = f"\n\n{PRECEDENCE}"
    return "examples:\n" + "\n".join("  " + line for line in lines) + tail


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown in --help (where there is one to show), and the epilog's line breaks kept."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or action.required:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from cmkd.version import __version__

    p = argparse.ArgumentParser(prog="cmkd", description="Cross-modal knowledge distillation for "
                                "fine-grained one-shot classification (Zhao et al., ICASSP 2021)",
                                epilog=_epilog(), formatter_class=_Help)
    p.add_argument("--version", action="version", version=f"cmkd {__version__}")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a Python module first (one that calls cmkd.register for your own parts); repeatable")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, helptext: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=helptext, description=helptext, epilog=_epilog(name), formatter_class=_Help)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="YAML config: a path or a shipped name (cmkd config list); flags and "
                        "key=value win over it")
        sp.add_argument("--name", help="run name: weights go to <out>/<name> (sets name)")
        sp.add_argument("--modality", choices=choices("model.modality"), help="sets model.modality")
        sp.add_argument("--resume", action="store_true", help="continue from <run>/last.json")
        sp.add_argument("--overwrite", action="store_true", help="replace the run this name already holds")
        sp.add_argument("--print-config", action="store_true",
                        help="print the effective config (defaults < file < flags < key=value) and exit")
        sp.add_argument("--device", help="cpu, cuda, cuda:1 ... (none: cuda if available; under torchrun each "
                        "rank takes the GPU of its local rank)")
        sp.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides (cmkd config keys)")

    t = add("train", "train a few-shot model (student or image+text teacher)")
    common(t)
    t.set_defaults(func=cmd_train)

    d = add("distill", "train a one-modality student with its loss + lambda * SRL from a teacher")
    common(d)
    d.add_argument("--teacher", help="teacher run directory or checkpoint; several, comma-separated: their "
                   "ensemble teaches (sets distill.teacher)")
    d.add_argument("--method", choices=choices("distill.method"), help="sets distill.method")
    d.add_argument("--init", type=Path, help="start the student from this checkpoint")
    d.add_argument("--same-modality", action="store_true",
                   help="accept a teacher that sees only the student's modality: the control that measures how much "
                   "of a gain is self-distillation rather than cross-modal")
    d.set_defaults(func=cmd_distill)

    e = add("evaluate", "score runs on the same fixed episodes and compare them")
    e.add_argument("runs", nargs="+", metavar="[NAME=]RUN[,RUN...]",
                   help="run directories or checkpoints; several runs of one method (training seeds) separated by "
                        "commas are pooled: mean and interval over runs and episodes; RUN1+RUN2+... is one run, "
                        "the ensemble of those teachers (the mean of their scores, as distill.teacher=RUN1,RUN2)")
    e.add_argument("--split", default="novel", choices=SPLITS, help="classes the episodes use")
    e.add_argument("--episodes", type=int, default=600, help="fixed episodes per setting")
    e.add_argument("--seed", type=int, default=2021, help="seed of the fixed episode list")
    e.add_argument("--way", type=int, default=5, help="classes per episode")
    e.add_argument("--shots", type=int, nargs="+", default=[1, 5], help="support samples per class (each a setting)")
    e.add_argument("--query", type=int, default=15, help="queries per class")
    e.add_argument("--fine-grained", action="store_true", help="also fine-grained episodes (one group per episode)")
    e.add_argument("--reference", help="paired differences against this method (none: the first)")
    e.add_argument("--out", type=Path, default=Path("runs/evaluation.json"), help="results JSON")
    e.add_argument("--device", help="cpu, cuda, ... (none: cuda if available)")
    e.add_argument("--precision", choices=choices("train.precision"), default="fp32",
                   help="encoder precision (auto = bf16 on GPUs)")
    e.add_argument("--placement", choices=choices("data.placement"), default="auto",
                   help="where the images live (see data.placement)")
    e.set_defaults(func=cmd_evaluate)

    pr = add("predict", "classify query images from one (or K) labelled examples per class")
    pr.add_argument("--model", required=True, type=Path, help="student run directory or checkpoint")
    pr.add_argument("--support", required=True, type=Path, help="DIR/<class>/<image>: the labelled examples")
    pr.add_argument("--query", required=True, type=Path, nargs="+",
                    help="images or folders; a query inside a folder named like a class counts toward accuracy")
    pr.add_argument("--json", action="store_true", help="machine-readable output")
    pr.add_argument("--device", help="cpu, cuda, ... (none: cuda if available)")
    pr.set_defaults(func=cmd_predict)

    pp = add("prepare", "decode a dataset once into the cache that training loads")
    pp.add_argument("format", choices=["cub", "flowers", "folder", "table"], help="the dataset's on-disk format")
    pp.add_argument("--root", type=Path, help="CUB_200_2011/, the Oxford-102 folder, or ROOT/<class>/ (with an "
                    "optional ROOT/metadata.jsonl holding file_name and captions)")
    pp.add_argument("--file", type=Path, help="table: a .csv or .jsonl with columns path, label, caption[s] and "
                    "optional group, split")
    pp.add_argument("--captions", type=Path, help="caption tree (Reed et al.'s text_c10/) for cub and flowers")
    pp.add_argument("--size", type=int, default=84, help="square image side after resizing")
    pp.add_argument("--channels", type=int, choices=[1, 3], default=3, help="1: grey, 3: RGB")
    pp.add_argument("--crop", action="store_true", help="cub: crop to the bounding box first")
    pp.add_argument("--split-file", type=Path, help="class splits as JSON {base: [...], ...} or CSV class,split")
    pp.add_argument("--seed", type=int, default=0, help="seed of fraction splits (flowers, folder)")
    pp.add_argument("--name", help="dataset name under $CMKD_DATA (none: <format>_<size>)")
    pp.add_argument("--out", type=Path, help="explicit output folder (overrides --name)")
    pp.add_argument("--skip-bad", action="store_true", help="leave unreadable images out and list them")
    pp.add_argument("--workers", type=int, help="decoding processes (none: all cores)")
    pp.set_defaults(func=cmd_prepare)

    ex = add("export", "write a trained image model as one ONNX or torch.export graph (support, labels, query -> "
             "logits)")
    ex.add_argument("run", type=Path, help="run directory or checkpoint of an image model (the student)")
    ex.add_argument("--out", type=Path, required=True, help="file to write (.onnx or .pt2)")
    ex.add_argument("--format", choices=["onnx", "pt2"], default="onnx",
                    help="onnx: any ONNX runtime; pt2: a torch.export program (torch.export.load)")
    ex.add_argument("--way", type=int, help="classes per episode the graph scores (none: the run's episode.way)")
    ex.set_defaults(func=cmd_export)

    pb = add("probe", "will my captions help? train an image, a text and an image+text model alike and report "
             "what the text adds and how much of it the image carries")
    pb.add_argument("--config", help="YAML config: a path or a shipped name (each part replaces its model.modality)")
    pb.add_argument("--name", help="runs go to <out>/<name>/{image,text,image_text} (sets name)")
    pb.add_argument("--resume", action="store_true", help="continue the parts' runs")
    pb.add_argument("--overwrite", action="store_true", help="replace the parts' runs")
    pb.add_argument("--print-config", action="store_true", help="print the effective config and exit")
    pb.add_argument("--device", help="cpu, cuda, ... (none: cuda if available)")
    pb.add_argument("--split", default="val", choices=["val", "novel"],
                    help="classes of the scored episodes (decide on val; novel only to report)")
    pb.add_argument("--episodes", type=int, default=600, help="fixed episodes per setting")
    pb.add_argument("--seed", type=int, default=7, help="seed of the fixed episode list")
    pb.add_argument("--fine-grained", action="store_true", help="also fine-grained episodes (one group per episode)")
    pb.add_argument("--out", type=Path, help="results JSON (none: <out>/<name>/probe.json)")
    pb.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides (cmkd config keys)")
    pb.set_defaults(func=cmd_probe)

    ds = add("datasets", "list available datasets with counts")
    ds.add_argument("--json", action="store_true", help="machine-readable output")
    ds.set_defaults(func=cmd_datasets)

    cf = add("config", "show configs: the shipped ones, every key with its default, an effective config")
    cf.add_argument("action", choices=["show", "list", "keys"],
                    help="show [NAME] [key=value ...]: the effective YAML; list: shipped configs; keys: every key")
    cf.add_argument("name", nargs="?", help="show: a shipped config name or a YAML path")
    cf.add_argument("overrides", nargs="*", metavar="section.key=value", help="show: overrides")
    cf.set_defaults(func=cmd_config)

    dm = add("demo", "teacher, image and text students alone and distilled, on glyphs, with a report")
    dm.add_argument("--out", default="runs/demo", help="folder of the runs, results.json and report.md")
    dm.add_argument("--quick", action="store_true", help="a much shorter run (a smoke test, not a result)")
    dm.add_argument("--no-baselines", action="store_true", help="skip the KD baselines")
    dm.add_argument("--device", help="cpu, cuda, ... (none: cuda if available)")
    dm.set_defaults(func=cmd_demo)
    return p


class _StderrBesideBars(logging.Handler):
    """Writes each message to whatever ``sys.stderr`` is when it is emitted (``main`` may run again with stderr
    redirected or captured), on its own line above any progress bar (``tqdm.write`` clears and redraws it)."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging's contract: a failing handler reports, never raises
            self.handleError(record)


def _show_messages() -> None:
    """The library logs to the ``cmkd`` logger and leaves handlers to its user; the command line shows
    its messages (the objective, resumes, recoveries) on stderr, one plain line each."""
    log = logging.getLogger("cmkd")
    if not log.handlers:
        handler = _StderrBesideBars()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def _import_user_module(name: str) -> None:
    """``--import``: a module of the user's (on sys.path or in the working directory) that registers parts."""
    import importlib

    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name.split(".")[0] and err.name != name:
            raise
        raise ConfigError(f"--import {name}: no such module on the Python path or in the working directory "
                          "(give its importable name, e.g. my_parts for ./my_parts.py)") from None


def main(argv: Sequence[str] | None = None) -> int:
    _show_messages()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow a flag (`... --resume train.episodes=900`)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    clean = False
    try:
        for module in args.imports:
            _import_user_module(module)
        args.func(args)
        clean = True
    except USER_ERRORS as err:
        # the project's own errors name the file or field and the fix; anything else is a bug: traceback
        print(f"cmkd {args.command}: error: {err}", file=sys.stderr)
        return 2
    finally:
        if "cmkd.distributed" in sys.modules:  # a command that joined a process group leaves it
            sys.modules["cmkd.distributed"].teardown(clean)
    return 0


if __name__ == "__main__":
    sys.exit(main())
