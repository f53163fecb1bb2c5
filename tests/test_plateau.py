"""train.budget=plateau: double the budget until one more doubling gains too little; keep the best run."""

import argparse
import json

from cmkd.checkpoint import load_model
from cmkd.cli import _fit, main
from cmkd.train import distiller
from cmkd.train.distiller import embed_teacher
from cmkd.train.loop import Trainer

FAST = ["train.val_every=4", "train.val_episodes=4", "train.val_query=2", "episode.query=2", "train.threads=2"]


def test_plateau_search_stops_at_the_first_small_gain_and_publishes_the_kept_run(tmp_path, capsys):
    argv = ["train", "--name", "p", f"out={tmp_path}", *FAST, "train.budget=plateau", "train.episodes=4",
            "train.max_episodes=32", "train.plateau_gain=100"]  # no doubling can gain 100 points: stop after one
    assert main(argv) == 0
    info = json.loads((tmp_path / "p" / "plateau.json").read_text())
    assert [c["episodes"] for c in info["curve"]] == [4, 8]
    assert info["plateau_budget"] == 4 and not info["reached_max"] and "less than 100.0 points" in info["rule"]
    kept = max(info["curve"], key=lambda c: c["best_val_acc"])["episodes"]
    assert info["kept_budget"] == kept
    _, meta = load_model(tmp_path / "p")  # the folder works like any run folder
    assert meta["plateau"]["kept"] == kept and meta["config"]["train"]["episodes"] == kept
    assert (tmp_path / "p" / "e4" / "best.json").exists() and not (tmp_path / "p" / "e16").exists()
    before = (tmp_path / "p" / "e8" / "last.json").read_text()
    assert main([*argv, "--resume"]) == 0  # finished budgets are reused, not retrained
    assert (tmp_path / "p" / "e8" / "last.json").read_text() == before
    assert json.loads((tmp_path / "p" / "plateau.json").read_text())["curve"] == info["curve"]


def test_plateau_search_runs_to_the_maximum_when_every_doubling_pays(tmp_path):
    argv = ["train", "--name", "m", f"out={tmp_path}", *FAST, "train.budget=plateau", "train.episodes=4",
            "train.max_episodes=8", "train.plateau_gain=-100"]  # every doubling "pays": the maximum ends the search
    assert main(argv) == 0
    info = json.loads((tmp_path / "m" / "plateau.json").read_text())
    assert [c["episodes"] for c in info["curve"]] == [4, 8] and info["reached_max"] and info["plateau_budget"] is None


def test_plateau_settings_with_a_fixed_budget_are_refused(tmp_path, capsys):
    assert main(["train", "--name", "x", f"out={tmp_path}", *FAST, "train.plateau_gain=1"]) == 2
    assert "'train.plateau_gain' is read only when train.budget is plateau" in capsys.readouterr().err


def test_a_distilled_plateau_search_makes_one_teacher_pass(small, fast_cfg, monkeypatch):
    teacher = Trainer(fast_cfg(**{"model.modality": "image+text", "name": "t", "train.episodes": 4}), small).model
    calls = []
    monkeypatch.setattr(distiller, "embed_teacher", lambda *a: calls.append(1) or embed_teacher(*a))
    cfg = fast_cfg(**{"name": "d", "distill.teacher": "t", "train.budget": "plateau", "train.episodes": 48,
                      "train.val_every": 48, "train.max_episodes": 96, "train.plateau_gain": -100})
    _fit(cfg, argparse.Namespace(resume=False, overwrite=False), small, "cpu", teacher)  # 48 x 30 draws: the pass
    info = json.loads((cfg.run_dir / "plateau.json").read_text())
    assert [c["episodes"] for c in info["curve"]] == [48, 96] and calls == [1], "both budgets, one teacher pass"
