"""train -> distill (both directions) -> evaluate, through the command line."""

import json

from cmkd.cli import main

FAST = ["train.episodes=10", "train.val_every=10", "train.val_episodes=10", "train.val_query=3", "episode.query=3"]


def test_train_distill_evaluate_from_the_cli(tmp_path, capsys):
    out = f"out={tmp_path}"
    assert main(["train", "--modality", "image+text", "--name", "teacher", out, *FAST]) == 0
    assert (tmp_path / "teacher" / "best.json").exists()
    assert main(["distill", "--teacher", str(tmp_path / "teacher"), "--name", "image_student", out, *FAST,
                 "distill.teacher_inputs=same"]) == 0
    assert main(["distill", "--teacher", str(tmp_path / "teacher"), "--modality", "text", "--method", "kd",
                 "--name", "text_student", out, *FAST, "distill.teacher_inputs=same"]) == 0
    meta = json.loads((tmp_path / "text_student" / "best.json").read_text())
    assert meta["spec"]["model"]["modality"] == "text" and meta["config"]["distill"]["method"] == "kd"
    capsys.readouterr()
    # a teacher shown other pixels than it was trained on: allowed, said once
    assert main(["distill", "--teacher", str(tmp_path / "teacher"), "--name", "low_res", out, *FAST,
                 "data.low_res=8", "train.episodes=2", "train.val_every=2"]) == 0
    assert "was trained on other data than the student's (data.low_res=0, student 8)" in capsys.readouterr().err
    result_path = tmp_path / "eval.json"
    assert main(["evaluate", f"student={tmp_path / 'image_student'}", f"teacher={tmp_path / 'teacher'}",
                 "--episodes", "20", "--shots", "1", "--fine-grained", "--out", str(result_path)]) == 0
    printed = capsys.readouterr().out
    assert "| student |" in printed and "teacher - student" in printed
    assert "± is the 95% interval of the mean over the episodes (Student t)" in printed
    assert "on 20 fixed novel episodes per setting" in printed and "p two-sided against no difference" in printed
    result = json.loads(result_path.read_text())
    assert {m["null"] for s in result["settings"] for m in s["methods"].values()} == {0.2}  # p against chance
    assert [s["label"] for s in result["settings"]] == ["5-way 1-shot", "5-way 1-shot fine-grained"]
    assert result["episodes"] == 20 and result["split"] == "novel"


def test_distill_refuses_a_one_modality_teacher(tmp_path, capsys):
    out = f"out={tmp_path}"
    assert main(["train", "--name", "plain", out, *FAST]) == 0
    assert main(["distill", "--teacher", str(tmp_path / "plain"), "--name", "s", out, *FAST]) == 2
    assert "CMKD needs a teacher with the other modality" in capsys.readouterr().err
    # the self-distillation control: accepted when asked for, and it distils (the SRL's terms are in the loss)
    assert main(["distill", "--teacher", str(tmp_path / "plain"), "--name", "s", "--same-modality", out, *FAST]) == 0
    logged = [json.loads(line) for line in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["srl_rel"] > 0 and r["loss"] > r["ce"] for r in logged if r["kind"] == "train")


def test_evaluate_a_missing_run_is_a_clear_error(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nothing")]) == 2
    assert "neither a run directory nor a checkpoint" in capsys.readouterr().err
