"""benchmarks/convergence.py report: which student alone each distilled cell is paired with, and the plot's
seed counts. The pairing decides every headline difference, so it is tested on hand-made cells."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cmkd.config import ModelConfig
from cmkd.data.device import DeviceData
from cmkd.errors import FolderInUseError, OutputFolderError
from cmkd.eval.evaluate import episode_list
from cmkd.models.fewshot import FewShotModel
from cmkd.run_folder import RunDirectory
from conftest import load_benchmark

convergence = load_benchmark("convergence")


def _cell(cells: Path, name: str, acc: float, config: dict) -> None:
    seed = int(name.rsplit("_s", 1)[1])
    noise = np.random.default_rng(seed).normal(0, 0.01, 20)  # the same per-episode noise for every cell of a seed
    per_episode = {label: (acc + noise).tolist() for label in convergence.SETTINGS}
    record = {"cell": name, "config": config, "train_seconds": 1.0, "per_episode": per_episode}
    (cells / f"{name}.json").write_text(json.dumps(record))


def _report(cells: Path, tmp: Path, **kw) -> dict:
    args = argparse.Namespace(cells=cells, show=["val 1-shot FG"], out=tmp / "out.json", plot=None,
                              plot_setting=["val 1-shot FG"], plot_roles=None, **kw)
    convergence.report(args)
    return {(r["run"], r["episodes"]): r for r in json.loads((tmp / "out.json").read_text())["rows"]}


def test_pairing_follows_tags_and_configs(tmp_path):
    cells = tmp_path / "cells"
    cells.mkdir()
    plain = {"data": {}, "distill": {}, "name": "x"}  # a cell from before data.low_res: it ran at the default
    low = {"data": {"low_res": 8}, "distill": {"every": 1}, "name": "y"}
    for seed in (0, 1, 2):
        _cell(cells, f"image_none_e100_s{seed}", 0.50, plain)
        _cell(cells, f"image_srl_t9_e100_s{seed}", 0.60, plain)
        _cell(cells, f"image_srl_t9_every4_e100_s{seed}", 0.55, {**plain, "distill": {"every": 4}})
        _cell(cells, f"image_none_lowres8_e100_s{seed}", 0.30, low)
        _cell(cells, f"image_srl_t9_lowres8_e100_s{seed}", 0.34, low)
        _cell(cells, f"image_srl_t9_lowres8w16_e100_s{seed}", 0.33, {**low, "distill": {"weight": 16}})
        _cell(cells, f"image_srl_t9_shifted_e100_s{seed}", 0.70, {**low, "data": {"low_res": 4}})  # no reference
    rows = _report(cells, tmp_path)
    ref = {run: row["minus_reference"].get("val 1-shot FG") for (run, _), row in rows.items()}
    assert ref["image_none"] is None and ref["image_none_lowres8"] is None
    assert ref["image_srl_t9"]["reference"] == "image_none"
    assert ref["image_srl_t9_every4"]["reference"] == "image_none"  # only distill.* differs
    assert ref["image_srl_t9_lowres8"]["reference"] == "image_none_lowres8"  # its own tagged student
    assert ref["image_srl_t9_lowres8w16"]["reference"] == "image_none_lowres8"  # a distill variant of it
    assert ref["image_srl_t9_shifted"] is None  # never paired with a student of another config
    assert ref["image_srl_t9"]["seeds"] == [0, 1, 2]
    for run, gain in {"image_srl_t9": 0.10, "image_srl_t9_lowres8": 0.04, "image_srl_t9_lowres8w16": 0.03}.items():
        assert ref[run]["mean"] == pytest.approx(gain, abs=1e-9)


def test_seed_counts_name_the_thin_budgets():
    rows = [{"episodes": 1200, "seeds": [0, 1, 2]}, {"episodes": 38400, "seeds": [0]}]
    assert convergence._seed_counts(rows) == "3 seeds; 1 at 38,400"
    assert convergence._seed_counts(rows[:1]) == "3 seeds"
    assert convergence._seed_counts(rows[1:]) == "1 seed"


def test_every_run_of_a_long_grid_gets_its_own_look():
    looks = [tuple(sorted(convergence._style(i).items())) for i in range(150)]
    assert len(set(looks)) == 150
    assert convergence._style(0) == {"color": "C0", "marker": "o", "ls": "-"}  # short grids keep the default look
    assert convergence._style(10)["color"] == "C0" and convergence._style(10)["marker"] != "o"


def test_plot_refuses_unknown_roles(tmp_path):
    out = {"rows": [{"run": "image_none", "episodes": 100, "seeds": [0],
                     "accuracy": {"val 1-shot FG": {"mean": 0.5, "ci95": 0.0}}}]}
    with pytest.raises(SystemExit, match="image_srl"):
        convergence.plot(out, tmp_path / "p.png", ["val 1-shot FG"], ["image_srl"])
    convergence.plot(out, tmp_path / "p.png", ["val 1-shot FG"], ["image_none"])
    out["rows"].append({"run": "image_srl", "episodes": 200, "seeds": [0],
                        "accuracy": {"val 1-shot FG": {"mean": 0.7, "ci95": 0.0}}})
    convergence.plot(out, tmp_path / "both.png", ["val 1-shot FG"])
    convergence.plot(out, tmp_path / "one.png", ["val 1-shot FG"], ["image_none"])
    assert (tmp_path / "one.png").read_bytes() == (tmp_path / "p.png").read_bytes()  # the other run left out
    assert (tmp_path / "both.png").read_bytes() != (tmp_path / "p.png").read_bytes()
    (tmp_path / "elsewhere.txt").write_text("keep")
    (tmp_path / "link.png").symlink_to(tmp_path / "elsewhere.txt")
    with pytest.raises(OutputFolderError, match="link.png is a symbolic link"):  # never written through
        convergence.plot(out, tmp_path / "link.png", ["val 1-shot FG"])
    assert (tmp_path / "elsewhere.txt").read_text() == "keep"


def test_compare_pairs_two_cells_on_their_common_seeds_and_measures_the_share_of_the_gap(tmp_path, capsys):
    cells = tmp_path / "cells"
    cells.mkdir()
    for seed in (0, 1, 2):
        _cell(cells, f"text_none_e100_s{seed}", 0.50, {})
        _cell(cells, f"teacher_e50_s{seed}", 0.90, {})
    for seed in (1, 2):  # a cell with fewer seeds: paired on seeds 1 and 2 only
        _cell(cells, f"text_srl_t50_e100_s{seed}", 0.60 + 0.02 * seed, {})
    args = argparse.Namespace(cells=cells, a="text_srl_t50_e100", b="text_none_e100", gap="teacher_e50", minus=None,
                              out=tmp_path / "cmp.json")
    convergence.compare(args)
    out = json.loads((tmp_path / "cmp.json").read_text())
    assert out["seeds"] == [1, 2]
    row = out["rows"][0]
    assert row["per_seed"] == pytest.approx([0.12, 0.14])
    assert row["mean"] == pytest.approx(0.13)
    assert row["gap"] == pytest.approx(0.40)  # the teacher's lead over the student alone
    printed = capsys.readouterr().out
    assert "32% of +40.00" in printed  # 0.13 of 0.40
    assert out["val_curve"] == []  # hand-made cells without a history: no curve, no line
    assert "runs' own validation" not in printed
    with pytest.raises(SystemExit, match="text_kd_t50_e100"):
        convergence.compare(argparse.Namespace(**{**vars(args), "a": "text_kd_t50_e100"}))
    with pytest.raises(SystemExit, match="role_eBUDGET"):  # a cell named without its budget
        convergence.compare(argparse.Namespace(**{**vars(args), "a": "text_srl_t50"}))
    _cell(cells, "teacher_e9_s0", 0.90, {})
    with pytest.raises(SystemExit, match=r"lacks seeds \[1, 2\]"):
        convergence.compare(argparse.Namespace(**{**vars(args), "gap": "teacher_e9"}))


def test_compare_minus_gives_the_difference_of_two_gains_on_the_seeds_all_four_cells_hold(tmp_path, capsys):
    """``--minus c d``: how far one variant's gain over its own student alone exceeds another's over its own."""
    cells = tmp_path / "cells"
    cells.mkdir()
    for seed in (0, 1, 2):
        _cell(cells, f"image_none_q10_e100_s{seed}", 0.50, {})
        _cell(cells, f"image_srl_t9_q10_e100_s{seed}", 0.58 + 0.01 * seed, {})
        _cell(cells, f"image_none_e100_s{seed}", 0.45, {})
    for seed in (0, 1):  # paired on the seeds all four hold
        _cell(cells, f"image_srl_t9_e100_s{seed}", 0.55, {})
    args = argparse.Namespace(cells=cells, a="image_srl_t9_q10_e100", b="image_none_q10_e100", gap=None,
                              minus=["image_srl_t9_e100", "image_none_e100"], out=tmp_path / "cmp.json")
    convergence.compare(args)
    printed = capsys.readouterr().out
    assert printed.startswith("(image_srl_t9_q10_e100 - image_none_q10_e100) - (image_srl_t9_e100 - image_none_e100): "
                              "seeds [0, 1]")
    out = json.loads((tmp_path / "cmp.json").read_text())
    assert out["minus"] == ["image_srl_t9_e100", "image_none_e100"] and out["seeds"] == [0, 1]
    row = out["rows"][0]
    assert row["per_seed"] == pytest.approx([0.08 - 0.10, 0.09 - 0.10])
    assert row["mean"] == pytest.approx(-0.015)
    same = argparse.Namespace(**{**vars(args), "minus": ["image_srl_t9_e100", "image_none_q10_e100"]})
    convergence.compare(same)  # with b = d the difference of the gains is a - c
    plain = argparse.Namespace(**{**vars(args), "b": "image_srl_t9_e100", "minus": None, "out": tmp_path / "p.json"})
    convergence.compare(plain)
    assert json.loads((tmp_path / "cmp.json").read_text())["rows"][0]["mean"] == pytest.approx(
        json.loads((tmp_path / "p.json").read_text())["rows"][0]["mean"])
    with pytest.raises(SystemExit, match="do not combine"):
        convergence.compare(argparse.Namespace(**{**vars(args), "gap": "image_none_e100"}))
    with pytest.raises(SystemExit, match="image_kd_t9_e100"):
        convergence.compare(argparse.Namespace(**{**vars(args), "minus": ["image_kd_t9_e100", "image_none_e100"]}))


def test_compare_names_the_hosts_when_the_cells_trained_on_more_than_one(tmp_path, capsys):
    """Hosts whose kernels round differently give one seed other weights: a comparison across them is paired on
    seeds and episodes only, and says so; cells from one host get no note."""
    cells = tmp_path / "cells"
    cells.mkdir()
    for seed in (0, 1):
        for name, capability in (("image_none", "AVX2"), ("image_srl_t9", "AVX512"), ("image_kd_t9", "AVX512")):
            _cell(cells, f"{name}_e100_s{seed}", 0.5, {})
            path = cells / f"{name}_e100_s{seed}.json"
            record = json.loads(path.read_text())
            path.write_text(json.dumps({**record, "provenance": {"device": "EPYC", "cpu_capability": capability}}))
    _cell(cells, "image_lsl_t9_e100_s0", 0.5, {})  # from before cells kept their provenance
    args = argparse.Namespace(cells=cells, a="image_srl_t9_e100", b="image_none_e100", gap=None, minus=None,
                              out=tmp_path / "cmp.json")
    convergence.compare(args)
    assert "image_srl_t9_e100 ran on EPYC AVX512, image_none_e100 on EPYC AVX2" in capsys.readouterr().out
    assert json.loads((tmp_path / "cmp.json").read_text())["hosts"] == {
        "image_srl_t9_e100": ["EPYC AVX512"], "image_none_e100": ["EPYC AVX2"]}
    convergence.compare(argparse.Namespace(**{**vars(args), "b": "image_kd_t9_e100"}))
    assert "note:" not in capsys.readouterr().out
    convergence.compare(argparse.Namespace(**{**vars(args), "b": "image_lsl_t9_e100"}))
    assert "image_lsl_t9_e100 on unrecorded" in capsys.readouterr().out


def test_a_retrained_teacher_that_differs_from_its_stored_cell_is_named(tmp_path, capsys):
    """A teacher retrained on another host rounds differently: the grid says so, with the first differing step,
    instead of silently teaching new students with other weights than the stored students had."""
    history = [{"step": 800, "val_acc": 0.95}, {"step": 1600, "val_acc": 0.97}]
    stored = {"cell": "teacher_e1600_s1", "history": history, "provenance": {"device": "Old CPU (2 cores)",
                                                                           "cpu_capability": "AVX2"}}
    (tmp_path / "teacher_e1600_s1.json").write_text(json.dumps(stored))
    grid = argparse.Namespace(cells=tmp_path)
    same = argparse.Namespace(history=[dict(h) for h in history])
    convergence.Grid._check_retrained(grid, "teacher_e1600_s1", same)
    assert capsys.readouterr().out == ""
    other = argparse.Namespace(history=[history[0], {"step": 1600, "val_acc": 0.96}])
    convergence.Grid._check_retrained(grid, "teacher_e1600_s1", other)
    out = capsys.readouterr().out
    assert "retrained teacher_e1600_s1 differs from its stored cell (Old CPU (2 cores) AVX2) from step 1600" in out
    assert "val 97.00 stored, 96.00 now" in out


def test_grid_processes_sharing_a_teacher_take_turns_on_its_run_folder(monkeypatch, capsys, tmp_path):
    """Two grid processes started together for students of one teacher: the one finding the teacher's run folder
    in use waits and retries instead of dying; past its wait it raises the folder's error, and any other folder error
    (a planted link, a full disk) at once."""
    held = RunDirectory(tmp_path / "teacher")
    held.acquire()
    with pytest.raises(FolderInUseError, match="is in use by process"):  # what a second process meets
        RunDirectory(tmp_path / "teacher").acquire()
    held.release()
    monkeypatch.setattr(convergence.time, "sleep", lambda s: None)
    calls = []

    def train(name, config, flags, episodes):
        calls.append(name)
        if len(calls) < 3:
            raise FolderInUseError(f"{name} is in use by process 1")
        return "trained"

    grid = argparse.Namespace(teachers={}, train=train)
    assert convergence.Grid.teacher(grid, 9600, 2, "lowres8", {}) == "trained"
    assert calls == ["teacher_lowres8_e9600_s2"] * 3
    assert capsys.readouterr().out.count("teacher_lowres8_e9600_s2 is in use by another process; waiting") == 2
    calls.clear()
    grid.teachers = {}
    with pytest.raises(OutputFolderError, match="in use by process 1"):
        convergence.Grid.teacher(grid, 9600, 2, "lowres8", {}, wait_s=-1)
    assert len(calls) == 1

    def broken(name, config, flags, episodes):
        calls.append(name)
        raise OutputFolderError(f"{name}/last.json is a symbolic link")

    calls.clear()
    grid.train = broken
    with pytest.raises(OutputFolderError, match="is a symbolic link"):
        convergence.Grid.teacher(grid, 9600, 2, "lowres8", {})
    assert len(calls) == 1 and "waiting" not in capsys.readouterr().out


def test_compare_follows_the_difference_along_the_runs_own_validations(tmp_path, capsys):
    cells = tmp_path / "cells"
    cells.mkdir()
    for seed in (0, 1):
        for name, vals in ((f"image_srl_t9_e300_s{seed}", [0.70, 0.80, 0.90]),
                           (f"image_none_e300_s{seed}", [0.60 + 0.1 * seed, 0.78, 0.91])):
            _cell(cells, name, 0.5, {})
            record = json.loads((cells / f"{name}.json").read_text())
            record["history"] = [{"step": 100 * (i + 1), "val_acc": v} for i, v in enumerate(vals)]
            record["history"].insert(1, {"step": 150, "ce": 1.0})  # a training log line: no validation
            if seed == 1 and "srl" in name:
                record["history"].pop()  # seed 1 stopped validating early: its last step is left out
            (cells / f"{name}.json").write_text(json.dumps(record))
    args = argparse.Namespace(cells=cells, a="image_srl_t9_e300", b="image_none_e300", gap=None, minus=None,
                              out=tmp_path / "cmp.json")
    convergence.compare(args)
    curve = json.loads((tmp_path / "cmp.json").read_text())["val_curve"]
    assert [step for step, _ in curve] == [100, 200]
    assert [d for _, d in curve] == pytest.approx([0.05, 0.02])  # (0.10 + 0.00) / 2, then 0.02 on both seeds
    assert "runs' own validation, a - b (mean over seeds): 100 +5.00, 200 +2.00" in capsys.readouterr().out
    for seed in (0, 1):  # a run validated on fine-grained episodes: its curve does not subtract from b's
        path = cells / f"image_srl_t9_e300_s{seed}.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "config": {"train": {"val_fine_grained": True}}}))
    convergence.compare(args)
    printed = capsys.readouterr().out
    assert json.loads((tmp_path / "cmp.json").read_text())["val_curve"] == []
    assert "runs' own validation, a - b" not in printed
    assert "validated on different episodes" in printed and "train.val_fine_grained=True against" in printed


def test_teacher_seeds_teach_every_student_from_the_ensemble_of_those_teachers(monkeypatch, tmp_path):
    """``--teacher-seeds``: each student learns from the same teachers (not its own seed's), its cell says so
    (``_tNxK``), and the ensemble is scored once per student seed so that ``compare --gap`` pairs with it."""
    done: set[str] = set()
    trained, scored = [], []

    class Grid:
        def __init__(self, *args):
            pass

        def done(self, name):
            return name in done

        def teacher(self, episodes, seed, tag, flags):
            return f"teacher_{tag}_e{episodes}_s{seed}"

        def train(self, name, config, flags, episodes, teachers=()):
            trained.append((name, flags["train.seed"], teachers))
            done.add(name)

        def score_ensemble(self, name, teachers):
            scored.append((name, teachers))
            done.add(name)

    monkeypatch.setattr(convergence, "Grid", Grid)
    argv = ["convergence.py", "run", "--cells", str(tmp_path), "--teacher-tag", "lowres8", "--tag", "clean2",
            "--methods", "none", "srl", "--budgets", "4800", "--teacher-episodes", "9600", "--seeds", "1", "2",
            "--teacher-seeds", "0", "1", "2"]
    monkeypatch.setattr("sys.argv", argv)
    convergence.main()
    teachers = tuple(f"teacher_lowres8_e9600_s{s}" for s in (0, 1, 2))
    assert scored == [(f"teacher_lowres8x3_e9600_s{s}", list(teachers)) for s in (1, 2)]
    assert trained == [("image_none_clean2_e4800_s1", 1, ()), ("image_srl_t9600x3_clean2_e4800_s1", 1, teachers),
                       ("image_none_clean2_e4800_s2", 2, ()), ("image_srl_t9600x3_clean2_e4800_s2", 2, teachers)]
    convergence.main()  # a finished grid: nothing trained or scored again
    assert len(trained) == 4 and len(scored) == 2


def test_a_run_flag_that_would_change_the_grids_one_dataset_is_refused_before_anything_trains(monkeypatch,
                                                                                               tmp_path):
    """The grid loads one dataset for all its runs: a data setting given to the teachers or students only
    (``--teacher-set data.captions=names``) would be recorded in their config but never reach the data, so it is
    refused before the dataset loads or anything trains, naming the option, the setting and the fix; the same
    value as ``--set``'s, or a data setting that does not make the dataset (``data.augment``), passes."""
    monkeypatch.setattr(convergence, "Grid", lambda *args: pytest.fail("the grid started"))
    common = ["convergence.py", "run", "--cells", str(tmp_path), "--set", "data.low_res=8", "--budgets", "10"]
    for option, flag in (("--teacher-set", "data.captions=names"), ("--student-set", "data.low_res=12"),
                         ("--student-set", "data.image_size=48")):
        monkeypatch.setattr("sys.argv", [*common, option, "data.augment=false", flag])
        with pytest.raises(SystemExit, match=rf"{option} {flag} would change the dataset, which the grid loads once "
                                             r".* give data settings with --set"):
            convergence.main()
    assert convergence.changed_data({"data.dataset": "glyphs", "data.low_res": 8},
                                    {"data.low_res": 8, "data.image_size": 32, "data.augment": False}) == []


def test_an_ensemble_cell_scores_the_mean_of_its_members_on_the_grids_episodes(small, tmp_path):
    """``Grid.score_ensemble`` on real models and episodes: an ensemble of two copies of one teacher scores every
    episode exactly as that teacher does, the order of two different members does not matter, and each of them
    counts (the pair scores differently from either alone); the cell names its members and sums their time."""
    grid = object.__new__(convergence.Grid)
    grid.cells, grid.eval_episodes, grid.data = tmp_path, 3, DeviceData(small)
    grid.lists = {}
    for label in ("val 1-shot FG", "novel 5-shot"):  # two of the grid's settings, for speed
        split, seed, setting = convergence.SETTINGS[label]
        grid.lists[label] = episode_list(grid.data, split, setting, 3, seed)
    teachers = []
    for seed, seconds in ((0, 10.0), (1, 32.5)):
        torch.manual_seed(seed)
        name = f"teacher_e40_s{seed}"
        (tmp_path / f"{name}.json").write_text(json.dumps({"config": {"name": name}, "train_seconds": seconds}))
        model = FewShotModel(ModelConfig(modality="image"), 1, 32, None)
        teachers.append(argparse.Namespace(cfg=argparse.Namespace(name=name), model=model))

    def scored(name: str, members: list) -> dict:
        grid.score_ensemble(name, members)
        return json.loads((tmp_path / f"{name}.json").read_text())

    alone = [grid._evaluate(t.model)["per_episode"] for t in teachers]
    twice = scored("teacher_x2a_e40_s0", [teachers[0], teachers[0]])
    assert twice["per_episode"] == alone[0]
    pair = scored("teacher_x2_e40_s1", teachers)
    assert pair["members"] == ["teacher_e40_s0", "teacher_e40_s1"] and pair["train_seconds"] == 42.5
    assert pair["config"] == {"name": "teacher_e40_s0"} and pair["history"] == []
    assert scored("teacher_x2b_e40_s1", teachers[::-1])["per_episode"] == pair["per_episode"]
    assert all(pair["per_episode"] != a for a in alone)
    assert pair["accuracy"] == pytest.approx({k: np.mean(v) for k, v in pair["per_episode"].items()}, abs=1e-4)


def test_a_forgotten_teacher_tag_stops_the_grid_before_it_trains_a_new_teacher(tmp_path):
    """Students of ``--teacher-tag lowres8`` teachers run without the tag would silently train an untagged
    teacher: with no cell or run folder for the teacher asked for but a stored one under another tag, the grid
    stops at once and names the tag; an ensemble's score (``TAGxK``) is not a teacher to name."""
    cells, runs = tmp_path / "cells", tmp_path / "runs"
    cells.mkdir()
    for name in ("teacher_lowres8_e38400_s0", "teacher_lowres8_e38400_s1", "teacher_lowres8x3_e38400_s0",
                 "teacher_e9600_s0"):
        (cells / f"{name}.json").write_text("{}")
    assert convergence.other_teachers(cells, runs, 38400, [0, 1], "") == ["lowres8"]
    assert convergence.other_teachers(cells, runs, 38400, [0, 1], "lowres8") == []
    assert convergence.other_teachers(cells, runs, 9600, [0], "lowres8") == [""]
    assert convergence.other_teachers(cells, runs, 19200, [0], "") == []  # nothing stored: trained first, as before
    (runs / "teacher_e38400_s1").mkdir(parents=True)  # a new untagged teacher under way: resumed, not refused
    assert convergence.other_teachers(cells, runs, 38400, [0, 1], "") == []
    args = argparse.Namespace(teacher_set=[], student_set=[], methods=["none", "kd"], budgets=[76800], seeds=[0],
                              teacher_episodes=38400, teacher_budgets=[], teacher_seeds=[], teacher_tag="",
                              cells=cells, runs=runs)
    with pytest.raises(SystemExit, match=r"no teacher cell teacher_e38400_s0 .*--teacher-tag lowres8: give that, "
                                         r"or add --teacher-budgets 38400"):
        convergence.run(args)
    with pytest.raises(SystemExit, match=r"no teacher cell teacher_e38400_s0 "):  # an ensemble's members are checked
        convergence.run(argparse.Namespace(**{**vars(args), "seeds": [1], "teacher_seeds": [0]}))
    assert not any(runs.glob("*_s0"))  # nothing trained
