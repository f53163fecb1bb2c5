"""Budget protocol: does CMKD still help a student trained to its plateau?

One *cell* is one training run: a teacher or a student (alone or distilled with a method) at an
episode budget and a training seed. Each finished cell writes ``CELLS/<cell>.json`` with its
wall time and the per-episode accuracies of its best-of-val checkpoint on fixed episodes:
val (seed 7) and novel (seed 2021), 5-way 1-shot and 5-shot, random and fine-grained. A cell
whose JSON exists is skipped; an interrupted one resumes from its run folder's last checkpoint
(weights identical to an uninterrupted run). So a grid can be killed and restarted at any time:

    nice .venv/bin/python benchmarks/convergence.py run --modality image --methods none srl \\
        --budgets 1200 2400 4800 9600 19200 --seeds 0 1 2 --teacher-episodes 2400
    .venv/bin/python benchmarks/convergence.py report --out benchmarks/results/convergence.json \\
        --plot benchmarks/results/convergence.png
    .venv/bin/python benchmarks/convergence.py compare text_srl_t9600_e4800 text_none_e4800 \\
        --gap teacher_e9600    # any two cells, paired on their common seeds; the share of a teacher's lead
    .venv/bin/python benchmarks/convergence.py compare image_srl_t9600_q10_e4800 image_none_q10_e4800 \\
        --minus image_srl_t9600_e4800 image_none_e4800    # one variant's gain over its student against another's

On Linux with ``kernel.sched_autogroup_enabled=1`` (most desktops), ``nice`` only orders processes of one
session: a grid started with ``setsid`` or from another terminal competes as an equal. To let one grid yield
to another, set its session's weight too: ``echo 19 > /proc/PID/autogroup``.

A distilled student of seed ``s`` learns from the teacher cell of seed ``s`` at
``--teacher-episodes`` (trained first if missing; processes started together for students of one
teacher take turns on it; when that teacher has no cell but one of its budget is stored under another
``--teacher-tag``, the grid stops and names the tag rather than train a new teacher); with
``--teacher-seeds``, every student learns from the ensemble of those seeds' teachers (its cells are named
``_tNxK``, K teachers; the ensemble itself is scored as the cell ``teacher_TAGxK``, one copy per student
seed, for ``--gap``). Students and teachers share the shipped configs (``glyphs_student``,
``glyphs_distill``, ``glyphs_teacher``); validation runs ``--val-points`` times per run, so every budget is
selected on the same number of checks.
``--teacher-set model.modality=image`` (or ``text``) with its own ``--teacher-tag`` trains the teacher's
recipe without the other modality: the control whose students show how much of a gain is
self-distillation (RESULTS.md, "Controls at the plateau").
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from cmkd.config import flatten, load_config, upgrade
from cmkd.data.device import DeviceData
from cmkd.data.episodes import EpisodeSetting
from cmkd.data.registry import CONTENT_KEYS, load_dataset
from cmkd.errors import USER_ERRORS, FolderInUseError
from cmkd.eval.evaluate import episode_list, evaluate_lists
from cmkd.eval.stats import over_seeds, paired_over_seeds
from cmkd.files import write_atomic
from cmkd.models.ensemble import TeacherEnsemble
from cmkd.runtime import configure_cpu, pick_device, provenance
from cmkd.train.loop import Trainer

TEACHER, STUDENT, DISTILLED = "glyphs_teacher", "glyphs_student", "glyphs_distill"
SETTINGS = {  # label -> (split, evaluation seed, setting)
    f"{split} {shot}-shot{' FG' if fine else ''}": (split, 7 if split == "val" else 2021,
                                                   EpisodeSetting(5, shot, 15, fine))
    for split in ("val", "novel") for shot in (1, 5) for fine in (False, True)}


def _pairs(items: list[str]) -> dict:
    return {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in items)}


def cell_name(role: str, episodes: int, seed: int, tag: str = "") -> str:
    return f"{role}{'_' + tag if tag else ''}_e{episodes}_s{seed}"


class Grid:
    """Trains and scores cells, each once; everything under ``runs`` and ``cells``."""

    def __init__(self, dataset_name: str, runs: Path, cells: Path, common: dict, val_points: int,
                 eval_episodes: int, device: torch.device | str = "cpu") -> None:
        self.runs, self.cells, self.common, self.device = runs, cells, common, torch.device(device)
        self.val_points, self.eval_episodes = val_points, eval_episodes
        self.cells.mkdir(parents=True, exist_ok=True)
        self.base = {"data.dataset": dataset_name, "out": str(runs), **common}
        self.dataset = load_dataset(load_config(STUDENT, flags=self.base).data)
        self.data = DeviceData(self.dataset, self.device)
        self.lists = {label: episode_list(self.data, split, s, eval_episodes, seed)
                      for label, (split, seed, s) in SETTINGS.items()}
        self.teachers: dict[str, Trainer] = {}
        self.caches: dict = {}  # teacher cell -> its embeddings of the base split

    def done(self, name: str) -> bool:
        return (self.cells / f"{name}.json").exists()

    def train(self, name: str, config: str, flags: dict, episodes: int, teachers: tuple[Trainer, ...] = ()) -> Trainer:
        """Train (or resume) and score cell ``name``; ``teachers``: its teacher, or several: their ensemble."""
        val_every = max(1, episodes // self.val_points)
        cfg = load_config(config, flags={**self.base, **flags, "name": name, "train.episodes": episodes,
                                         "train.val_every": val_every})
        key = "+".join(t.cfg.name for t in teachers)
        teacher = (None if not teachers else teachers[0].model if len(teachers) == 1
                   else TeacherEnsemble([t.model for t in teachers]))
        trainer = Trainer(cfg, self.dataset, self.device, teacher=teacher, teacher_cache=self.caches.get(key))
        if teachers:  # one teacher pass serves all its students
            self.caches[key] = trainer.teacher_cache
        resume = (cfg.run_dir / "last.json").exists()
        start = time.perf_counter()
        trainer.fit(resume=resume, overwrite=not resume, progress=False, desc=name)
        seconds = time.perf_counter() - start
        trainer.load_best()
        if not self.done(name):
            self._score(name, trainer, cfg, seconds, resumed=resume)
        else:  # a teacher retrained for new students (its run folder was gone)
            self._check_retrained(name, trainer)
        return trainer

    def _check_retrained(self, name: str, trainer: Trainer) -> None:
        """Warn when a retrained cell's validation history is not its stored cell's: the same config and seed
        give other weights on a CPU or GPU whose kernels round differently, so new students learn from a
        teacher close to, but not bit-identical with, the one the stored students learnt from."""
        stored = json.loads((self.cells / f"{name}.json").read_text())
        then, now = _validations(stored["history"]), _validations(trainer.history)
        if then != now:
            first = next(((s, x, y) for (s, x), (_, y) in zip(then.items(), now.items()) if x != y), None)
            print(f"warning: retrained {name} differs from its stored cell ({_host(stored)})"
                  + (f" from step {first[0]} (val {100 * first[1]:.2f} stored, {100 * first[2]:.2f} now)"
                     if first else "")
                  + f"; this host ({_host({'provenance': provenance()})}) rounds "
                  "differently, and new students learn from the retrained teacher", flush=True)

    def _score(self, name: str, trainer: Trainer, cfg, seconds: float, resumed: bool) -> None:
        if resumed:  # this process ran the last stretch only; the history sums the training time over resumes
            seconds = trainer.history[-1]["seconds"]
        record = {"cell": name, "config": cfg.to_dict(), "train_seconds": round(seconds, 1), "resumed": resumed,
                  "best_val_acc": trainer.best_acc, "history": trainer.history, **self._evaluate(trainer.model)}
        write_atomic(self.cells / f"{name}.json", json.dumps(record))
        print(f"{name}: " + ", ".join(f"{k} {100 * v:.2f}" for k, v in record["accuracy"].items() if "1-shot" in k)
              + f" ({seconds:.0f} s)", flush=True)

    def score_ensemble(self, name: str, teachers: list[Trainer]) -> None:
        """Score the ensemble of ``teachers`` as cell ``name`` (no training: its time is its members' sum)."""
        members = [json.loads((self.cells / f"{t.cfg.name}.json").read_text()) for t in teachers]
        record = {"cell": name, "members": [t.cfg.name for t in teachers], "config": members[0]["config"],
                  "train_seconds": sum(m["train_seconds"] for m in members), "resumed": False,
                  "best_val_acc": None, "history": [],
                  **self._evaluate(TeacherEnsemble([t.model for t in teachers]).eval())}
        write_atomic(self.cells / f"{name}.json", json.dumps(record))

    def _evaluate(self, model) -> dict:
        """A cell's scores on the grid's fixed episodes: each setting's mean and per-episode accuracy."""
        labels = list(self.lists)
        accs = evaluate_lists(model, self.data, [self.lists[k] for k in labels],
                              [(SETTINGS[k][2].way, SETTINGS[k][2].shot) for k in labels])
        return {"provenance": provenance(), "eval_episodes": self.eval_episodes, "query": 15,
                "accuracy": {k: float(a.mean()) for k, a in zip(labels, accs)},
                "per_episode": {k: np.round(a, 4).tolist() for k, a in zip(labels, accs)}}

    def teacher(self, episodes: int, seed: int, tag: str, flags: dict, wait_s: float = 600.0) -> Trainer:
        """The teacher cell, trained first if missing. Grid processes started together for students of one teacher
        take turns on its run folder: a process finding it in use waits (up to ``wait_s``) instead of failing."""
        name = cell_name("teacher", episodes, seed, tag)
        deadline = time.monotonic() + wait_s
        while name not in self.teachers:
            try:
                self.teachers[name] = self.train(name, TEACHER, {"train.seed": seed, **flags}, episodes)
            except FolderInUseError:  # any other folder error is raised at once
                if time.monotonic() > deadline:
                    raise
                print(f"{name} is in use by another process; waiting for it", flush=True)
                time.sleep(15)
        return self.teachers[name]


def changed_data(base: dict, flags: dict) -> list[str]:
    """The settings that make the dataset (``CONTENT_KEYS``) that ``flags``, given to some runs, would change from
    the grid's ``base``: the grid loads one dataset for all its runs, so they would never reach the data."""
    ours = load_config(STUDENT, flags=base).data
    theirs = load_config(STUDENT, flags={**base, **{k: v for k, v in flags.items() if k.startswith("data.")}}).data
    return [f"data.{k}={getattr(theirs, k)}" for k in CONTENT_KEYS if getattr(theirs, k) != getattr(ours, k)]


def other_teachers(cells: Path, runs: Path, episodes: int, seeds: list[int], tag: str) -> list[str]:
    """The tags of stored teacher cells at ``episodes`` for ``seeds`` when the tagged one the students would learn
    from has neither a cell nor a run folder: a forgotten ``--teacher-tag`` would silently train a new teacher."""
    wanted = [cell_name("teacher", episodes, s, tag) for s in seeds]
    if any((cells / f"{n}.json").exists() or (runs / n).exists() for n in wanted):
        return []
    found = {p.stem.removeprefix("teacher").removesuffix(f"_e{episodes}_s{s}").lstrip("_")
             for s in seeds for p in cells.glob(f"teacher*_e{episodes}_s{s}.json")}
    return sorted(t for t in found if t != tag and not re.search(r"x\d+$", t))  # TAGxK: an ensemble's score


def run(args: argparse.Namespace) -> None:
    teacher_flags, student_flags = _pairs(args.teacher_set), _pairs(args.student_set)
    distilled = any(m != "none" for m in args.methods) and bool(args.budgets)
    teacher_seeds = args.teacher_seeds or args.seeds
    if distilled and args.teacher_episodes not in args.teacher_budgets and (
            tags := other_teachers(args.cells, args.runs, args.teacher_episodes, teacher_seeds, args.teacher_tag)):
        named = ", ".join(f"--teacher-tag {t}" if t else "no --teacher-tag" for t in tags)
        wanted = cell_name("teacher", args.teacher_episodes, teacher_seeds[0], args.teacher_tag)
        raise SystemExit(f"no teacher cell {wanted}"
                         f" (nor its run folder) exists, but teachers at {args.teacher_episodes} episodes do with "
                         f"{named}: give that, or add --teacher-budgets {args.teacher_episodes} to train the new one")
    for option, flags in (("--teacher-set", teacher_flags), ("--student-set", student_flags)):
        if changed := changed_data({"data.dataset": args.dataset, **_pairs(args.set)}, flags):
            raise SystemExit(f"{option} {', '.join(changed)} would change the dataset, which the grid loads once for "
                             "every run; give data settings with --set (image students never read captions)")
    device = pick_device(args.device)  # checked before anything trains
    configure_cpu(args.threads)
    grid = Grid(args.dataset, args.runs, args.cells, _pairs(args.set), args.val_points, args.eval_episodes, device)
    for seed in args.seeds:
        for budget in args.teacher_budgets:
            if not grid.done(cell_name("teacher", budget, seed, args.teacher_tag)):
                grid.teacher(budget, seed, args.teacher_tag, teacher_flags)
        ensemble = cell_name("teacher", args.teacher_episodes, seed, f"{args.teacher_tag}x{len(args.teacher_seeds)}")
        if args.teacher_seeds and not grid.done(ensemble):  # for --gap: one copy per student seed
            grid.score_ensemble(ensemble, [grid.teacher(args.teacher_episodes, s, args.teacher_tag, teacher_flags)
                                           for s in args.teacher_seeds])
    for budget in args.budgets:
        for seed in args.seeds:
            for method in args.methods:
                taught = f"_t{args.teacher_episodes}" + (f"x{len(args.teacher_seeds)}" if args.teacher_seeds else "")
                role = f"{args.modality}_{method}" + (taught if method != "none" else "")
                name = cell_name(role, budget, seed, args.tag)
                if grid.done(name):
                    continue
                flags = {"train.seed": seed, "model.modality": args.modality, **student_flags}
                if method == "none":
                    grid.train(name, STUDENT, flags, budget)
                else:
                    teachers = [grid.teacher(args.teacher_episodes, s, args.teacher_tag, teacher_flags)
                                for s in (args.teacher_seeds or [seed])]
                    grid.train(name, DISTILLED, {**flags, "distill.method": method}, budget, tuple(teachers))


def _grouped(cells: Path) -> dict[tuple[str, int], dict[int, dict]]:
    """The cells under ``cells`` by (role, budget), then by seed: ``role_eBUDGET_sSEED.json``."""
    groups: dict[tuple[str, int], dict[int, dict]] = {}
    for path in sorted(cells.glob("*.json")):
        name, seed = path.stem.rsplit("_s", 1)
        groups.setdefault(_key(name), {})[int(seed)] = json.loads(path.read_text())
    return groups


def _key(name: str) -> tuple[str, int]:
    """``role_eBUDGET`` (a cell's name without its seed) -> (role, budget)."""
    role, _, budget = name.rpartition("_e")
    if not role or not budget.isdigit():
        raise SystemExit(f"{name!r} is not a cell name without its seed (role_eBUDGET, e.g. text_none_e4800)")
    return role, int(budget)


def _fmt(stat, signed: bool = False) -> str:
    return f"{100 * stat.mean:{'+' if signed else ''}.2f} ± {100 * stat.ci95:.2f}"


def report(args: argparse.Namespace) -> None:
    groups = _grouped(args.cells)
    out: dict[str, Any] = {"cells": args.cells.as_posix(), "settings": list(SETTINGS), "rows": []}
    print(f"| run | episodes | seeds | train s (mean) | {' | '.join(args.show)} |")
    print("|---|---|---|---|" + "---|" * len(args.show))
    for (role, budget), by_seed in sorted(groups.items()):
        seeds = sorted(by_seed)
        row: dict[str, Any] = {"run": role, "episodes": budget, "seeds": seeds,
               "train_seconds": [by_seed[s]["train_seconds"] for s in seeds], "accuracy": {}, "minus_reference": {}}
        reference = _reference(role, budget, groups)
        for label in SETTINGS:
            accs = np.array([by_seed[s]["per_episode"][label] for s in seeds])
            stat = over_seeds(accs)
            row["accuracy"][label] = {"mean": stat.mean, "ci95": stat.ci95}
            if reference is not None:
                common = [s for s in seeds if s in reference[1]]
                if common:
                    ref = np.array([reference[1][s]["per_episode"][label] for s in common])
                    a = np.array([by_seed[s]["per_episode"][label] for s in common])
                    d = paired_over_seeds(a, ref)
                    row["minus_reference"][label] = {"reference": reference[0], "seeds": common, "mean": d.mean,
                                                     "ci95": d.ci95, "p": d.p}
        out["rows"].append(row)
        shown = []
        for label in args.show:
            acc = row["accuracy"][label]
            text = f"{100 * acc['mean']:.2f} ± {100 * acc['ci95']:.2f}"
            if label in row["minus_reference"]:
                d = row["minus_reference"][label]
                text += f" ({100 * d['mean']:+.2f} ± {100 * d['ci95']:.2f})"
            shown.append(text)
        print(f"| {role} | {budget} | {len(seeds)} | {np.mean(row['train_seconds']):.0f} | {' | '.join(shown)} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(args.out, json.dumps(out, indent=1), sync=False)
    if args.plot:
        plot(out, args.plot, args.plot_setting, args.plot_roles)


def _reference(role: str, budget: int, groups: dict) -> tuple[str, dict] | None:
    """The student alone a distilled cell is paired with, at the same budget: the one of the same modality and
    tag; failing that, a student alone (of any tag) whose config equals the distilled one's apart from
    ``distill.*`` keys, so that a tag naming a distillation variant pairs with the student it distils into."""
    modality, _, rest = role.partition("_")
    if not rest or rest.startswith("none") or modality == "teacher":
        return None
    tag = rest.split("_", 2)[2] if rest.count("_") >= 2 else ""
    ref_role = f"{modality}_none" + (f"_{tag}" if tag else "")
    if (ref_role, budget) in groups:
        return ref_role, groups[(ref_role, budget)]
    mine = groups[(role, budget)]
    for (other, b), plain in sorted(groups.items()):
        if b == budget and (other == f"{modality}_none" or other.startswith(f"{modality}_none_")) and \
                any(s in plain for s in mine) and all(_same_student(mine[s], plain[s]) for s in mine if s in plain):
            return other, plain
    return None


def compare(args: argparse.Namespace) -> None:
    """``a - b`` for two cells named without their seed (``role_eBUDGET``), paired on the seeds both hold and
    the same episodes; with ``gap``, the share of ``gap - b`` (a teacher's lead) that ``a - b`` closes; with
    ``minus`` (cells ``c d``), the difference of two gains ``(a - b) - (c - d)``, each seed's ``a - b`` counted as
    one run. A note names the hosts when the cells trained on more than one: there a seed fixes the episodes, not
    the weights."""
    if args.gap and args.minus:
        raise SystemExit("--gap and --minus do not combine: the share of a lead is a's over b")
    groups = _grouped(args.cells)
    keys = (args.a, args.b, *(args.minus or ()))
    by_seed = {key: groups.get(_key(key), {}) for key in (*keys, *([args.gap] if args.gap else []))}
    if missing := [key for key, found in by_seed.items() if not found]:
        raise SystemExit(f"no cells named {missing} in {args.cells} (give a cell's name without its _sN)")
    seeds = sorted(set.intersection(*(set(by_seed[key]) for key in keys)))
    if not seeds:
        raise SystemExit(f"{' and '.join(keys)} share no training seed")
    if args.gap and (lacking := sorted(set(seeds) - set(by_seed[args.gap]))):
        raise SystemExit(f"--gap {args.gap} lacks seeds {lacking}: the lead is measured on the compared seeds")
    title = f"({args.a} - {args.b}) - ({args.minus[0]} - {args.minus[1]})" if args.minus else f"{args.a} - {args.b}"
    print(f"{title}: seeds {seeds}; train s " + " vs ".join(f"{_mean_seconds(by_seed[k], seeds):.0f}" for k in keys))
    hosts = {key: sorted({_host(by_seed[key][s]) for s in seeds}) for key in keys}
    if len({h for found in hosts.values() for h in found}) > 1:
        print("note: " + ", ".join(f"{key}{' ran' if i == 0 else ''} on {' + '.join(hosts[key])}"
                                   for i, key in enumerate(keys)) + "; hosts that "
              "round differently give one seed other weights, so the pairing holds on seeds and episodes only")
    print(f"| setting | {'(a - b) - (c - d)' if args.minus else 'a - b'} | p | per seed |"
          + (" share of the gap |" if args.gap else ""))
    print("|---|---|---|---|" + ("---|" if args.gap else ""))
    rows = []
    for label in SETTINGS:
        a, b, *cd = (np.array([by_seed[k][s]["per_episode"][label] for s in seeds]) for k in keys)
        if cd:  # each seed's gain a - b against its gain c - d
            a, b = a - b, cd[0] - cd[1]
        d = paired_over_seeds(a, b)
        gains = [float(x - y) for x, y in zip(a.mean(1), b.mean(1))]
        row = {"setting": label, "mean": d.mean, "ci95": d.ci95, "p": d.p, "per_seed": gains}
        per_seed = " ".join(f"{100 * x:+.2f}" for x in gains)
        line = f"| {label} | {_fmt(d, signed=True)} | {d.p:.2g} | {per_seed} |"
        if args.gap:
            lead = np.mean([np.mean(by_seed[args.gap][s]["per_episode"][label]) for s in seeds]) - b.mean()
            row["gap"] = float(lead)
            line += f" {100 * d.mean / lead:.0f}% of {100 * lead:+.2f} |" if lead > 0 else " (no lead) |"
        rows.append(row)
        print(line)
    curve: list[tuple[int, float]] = []
    if not args.minus:  # with --minus no curve is drawn: its gains would need four runs' validations
        rules = [(_val_rule(by_seed[args.a][s]), _val_rule(by_seed[args.b][s])) for s in seeds]
        if differing := [(ra, rb) for ra, rb in rules if ra != rb]:
            ra, rb = (", ".join(f"{k}={v}" for k, v in rule.items()) for rule in differing[0])
            print(f"no curve of the runs' own validations: a and b validated on different episodes ({ra} against {rb})")
        else:
            curve = _val_curve(by_seed[args.a], by_seed[args.b], seeds)
    if curve:
        print("runs' own validation, a - b (mean over seeds): "
              + ", ".join(f"{episodes:,} {100 * d:+.2f}" for episodes, d in curve))
    if args.out:
        write_atomic(args.out, json.dumps({"a": args.a, "b": args.b, "gap": args.gap, "minus": args.minus,
                                           "seeds": seeds, "hosts": hosts, "rows": rows, "val_curve": curve}, indent=1),
                     sync=False)


def _val_curve(a: dict[int, dict], b: dict[int, dict], seeds: list[int]) -> list[tuple[int, float]]:
    """The two runs' own validations (their ``history``) as ``(episodes, mean over seeds of a - b)`` at the
    steps every seed of both validated: when a difference appears during training and whether it stays."""
    ca, cb = ([_validations(by_seed[s].get("history", [])) for s in seeds] for by_seed in (a, b))
    steps = sorted(set.intersection(*(set(c) for c in ca + cb)))
    return [(step, float(np.mean([x[step] - y[step] for x, y in zip(ca, cb)]))) for step in steps]


def _val_rule(cell: dict) -> dict:
    """What a run's own val episodes were drawn by: runs drawn otherwise have val curves that do not subtract."""
    flat = _flat_config(cell)
    return {k: flat[k] for k in ("episode.way", "episode.shot", "train.val_episodes", "train.val_query",
                                 "train.val_fine_grained")}


def _flat_config(cell: dict) -> dict:
    """A cell's config as ``section.key -> value``, with the defaults of keys added to cmkd after it ran."""
    return flatten(upgrade(cell["config"]))


def _validations(history: list[dict]) -> dict[int, float]:
    """``step -> val accuracy`` of a run's history (the lines that validated), in training order."""
    return {h["step"]: h["val_acc"] for h in history if "val_acc" in h}


def _host(cell: dict) -> str:
    """Where a cell trained: its device and torch's CPU capability ('unrecorded' before cells kept it)."""
    found = cell.get("provenance")
    return f"{found['device']} {found.get('cpu_capability', '')}".strip() if found else "unrecorded"


def _mean_seconds(by_seed: dict[int, dict], seeds: list[int]) -> float:
    return float(np.mean([by_seed[s]["train_seconds"] for s in seeds]))


def _same_student(a: dict, b: dict) -> bool:
    """Whether two cells' configs agree on every key apart from what names or distils them (a key one cell
    lacks was added to cmkd later, and ``upgrade`` gives it the default the older cell ran at)."""
    fa, fb = _flat_config(a), _flat_config(b)
    return all(fa[k] == fb[k] for k in fa if k.split(".")[0] not in ("name", "out", "distill"))


def _seed_counts(rows: list[dict]) -> str:
    """'3 seeds', or '3 seeds; 1 at 38,400' where some budgets hold fewer seeds than the most."""
    most = max(len(r["seeds"]) for r in rows)
    fewer = [f"{len(r['seeds'])} at {r['episodes']:,}" for r in rows if len(r["seeds"]) < most]
    return "; ".join([f"{most} seed{'s' if most > 1 else ''}", *fewer])


def _style(i: int) -> dict[str, str]:
    """Colour, marker and line style of the ``i``-th run: past matplotlib's 10 colours a new marker and line style
    keep every run distinct (150 runs before a look repeats)."""
    cycle = i // 10
    return {"color": f"C{i % 10}", "marker": "os^Dv"[cycle % 5], "ls": ("-", "--", ":")[cycle % 3]}


def plot(out: dict, path: Path, settings: list[str], roles: list[str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(settings), figsize=(5.2 * len(settings) + 3.0, 4.0), squeeze=False)  # + the legend
    known = sorted({r["run"] for r in out["rows"]})
    if unknown := sorted(set(roles or []) - set(known)):
        raise SystemExit(f"--plot-roles: no cells for {unknown}; the runs are {known}")
    roles = roles or known
    for ax, label in zip(axes[0], settings):
        for i, role in enumerate(roles):
            rows = sorted((r for r in out["rows"] if r["run"] == role), key=lambda r: r["episodes"])
            dodge = 2 ** (0.04 * (i - (len(roles) - 1) / 2))  # side by side at a shared budget, bars apart
            x = [r["episodes"] * dodge for r in rows]
            y = [100 * r["accuracy"][label]["mean"] for r in rows]
            ci = [100 * r["accuracy"][label]["ci95"] for r in rows]
            ax.errorbar(x, y, yerr=ci, **_style(i), ms=4, capsize=3, label=f"{role} ({_seed_counts(rows)})")
        ax.set_xscale("log", base=2)
        budgets = sorted({r["episodes"] for r in out["rows"] if r["run"] in roles})
        # long grids (past 7 budgets): short slanted labels (19.2k), so that neighbours do not overlap
        labels = [f"{b / 1000:g}k" if len(budgets) > 7 and b >= 1000 else f"{b:,}" for b in budgets]
        ax.set_xticks(budgets, labels, rotation=30 if len(budgets) > 7 else 0)
        ax.minorticks_off()
        ax.set_xlabel("training episodes")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{label}, 5-way, 15 queries", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, title="bars: 95% interval over seeds and episodes", title_fontsize=7,
                       loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside the axes, never over a curve
    fig.tight_layout()

    def save(tmp: Path) -> None:  # the canvas grows to hold the legend beside the axes
        fig.savefig(tmp, dpi=120, format="png", bbox_inches="tight")

    write_atomic(Path(path), save, sync=False)  # never through a link
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train and score the missing cells of a grid")
    r.add_argument("--dataset", default="glyphs")
    r.add_argument("--modality", default="image", choices=["image", "text"])
    r.add_argument("--methods", nargs="+", default=["none", "srl"], choices=["none", "kd", "rkd", "srl"])
    r.add_argument("--budgets", type=int, nargs="*", default=[1200, 2400, 4800, 9600, 19200])
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--teacher-episodes", type=int, default=2400, help="budget of the teacher the students learn from")
    r.add_argument("--teacher-budgets", type=int, nargs="*", default=[], help="teacher cells to train and score")
    r.add_argument("--teacher-seeds", type=int, nargs="*", default=[],
                   help="distil every student from the ensemble of these seeds' teachers (cells named _tNxK)")
    r.add_argument("--teacher-tag", default="", help="names a teacher variant (with --teacher-set)")
    r.add_argument("--teacher-set", nargs="*", default=[], metavar="key=value",
                   help="settings of the teachers only (data settings that make the dataset go in --set)")
    r.add_argument("--student-set", nargs="*", default=[], metavar="key=value",
                   help="settings of the students only (likewise)")
    r.add_argument("--set", nargs="*", default=[], metavar="key=value", help="overrides for every run")
    r.add_argument("--tag", default="", help="names a student variant (with --student-set)")
    r.add_argument("--val-points", type=int, default=12, help="validations per run")
    r.add_argument("--eval-episodes", type=int, default=600)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--device", help="cpu, cuda, ... (none: cuda if available)")
    r.add_argument("--runs", type=Path, default=Path("runs/convergence"))
    r.add_argument("--cells", type=Path, default=Path("benchmarks/results/convergence"))
    p = sub.add_parser("report", help="pool the finished cells over seeds; table, JSON and plot")
    p.add_argument("--cells", type=Path, default=Path("benchmarks/results/convergence"))
    p.add_argument("--show", nargs="+", default=["val 1-shot FG", "novel 1-shot FG", "novel 1-shot"])
    p.add_argument("--out", type=Path)
    p.add_argument("--plot", type=Path)
    p.add_argument("--plot-setting", nargs="+", default=["val 1-shot FG", "novel 1-shot FG"])
    p.add_argument("--plot-roles", nargs="+", help="the runs to draw (default: all), e.g. image_none image_srl_t9600")
    c = sub.add_parser("compare", help="a - b for two cells (named without _sN), paired on their common seeds")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--gap", help="a teacher cell (without _sN): print the share of its lead over b that a closes")
    c.add_argument("--minus", nargs=2, metavar=("C", "D"),
                   help="print (a - b) - (c - d): how far a's gain over b exceeds c's over d (e.g. one variant's "
                        "gain over its own student alone against another's)")
    c.add_argument("--cells", type=Path, default=Path("benchmarks/results/convergence"))
    c.add_argument("--out", type=Path)
    args = ap.parse_args()
    try:
        {"run": run, "report": report, "compare": compare}[args.command](args)
    except USER_ERRORS as err:  # names the file or flag and the fix: a line, not a traceback
        raise SystemExit(f"convergence.py {args.command}: error: {err}") from None


if __name__ == "__main__":
    main()
