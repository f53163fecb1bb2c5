"""What the user asks for is what runs: flag precedence, the paper grid, resume safety, provenance."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cmkd.checkpoint import load_checkpoint, model_state
from cmkd.cli import CONFIG_FLAGS, main
from cmkd.config import load_config, resume_conflicts
from cmkd.runtime import provenance, source_commit
from cmkd.train import distiller

REPO = Path(__file__).parents[1]
FAST = ["train.episodes=6", "train.val_every=6", "train.val_episodes=4", "train.val_query=2", "episode.query=2",
        "train.threads=2"]

# (subcommand, flag, dotted key, value in the YAML file, value typed as a flag, value given as key=value)
FLAG_CASES = [
    ("train", "--name", "name", "from_file", "from_flag", "from_override"),
    ("train", "--modality", "model.modality", "image", "text", "image+text"),
    ("distill", "--name", "name", "from_file", "from_flag", "from_override"),
    ("distill", "--modality", "model.modality", "image", "text", "image"),
    ("distill", "--method", "distill.method", "srl", "kd", "none"),
    ("distill", "--teacher", "distill.teacher", "runs/file_teacher", "runs/flag_teacher", "runs/last_teacher"),
]


def _yaml_setting(path: Path, dotted: str, value: str) -> Path:
    tree: dict = {}
    node = tree
    *sections, last = dotted.split(".")
    for s in sections:
        node = node.setdefault(s, {})
    node[last] = value
    path.write_text(yaml.safe_dump(tree))
    return path


def _effective(capsys, argv: list[str]) -> dict:
    capsys.readouterr()
    assert main([*argv, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def _get(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def test_every_config_flag_is_covered():
    flags = {(sub, flag) for sub, flag, *_ in FLAG_CASES}
    assert {f"--{attr}" for attr in CONFIG_FLAGS} == {flag for _, flag in flags}
    assert ("train", "--method") not in flags  # train has no distillation flags


@pytest.mark.parametrize(("sub", "flag", "dotted", "in_file", "typed", "last"), FLAG_CASES,
                         ids=[f"{c[0]}{c[1]}" for c in FLAG_CASES])
def test_a_typed_flag_beats_the_yaml_file_and_loses_to_key_value(sub, flag, dotted, in_file, typed, last, tmp_path,
                                                                  capsys):
    f = _yaml_setting(tmp_path / "c.yaml", dotted, in_file)
    assert _get(_effective(capsys, [sub, "--config", str(f)]), dotted) == in_file
    assert _get(_effective(capsys, [sub, "--config", str(f), flag, typed]), dotted) == typed
    assert _get(_effective(capsys, [sub, "--config", str(f), flag, typed, f"{dotted}={last}"]), dotted) == last


def test_layers_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train: {lr: 0.01, seed: 3}\nmodel: {modality: image}\n")
    cfg = load_config(f, ["train.seed=5"], base={"train.lr": 0.5, "train.episodes": 7},
                      flags={"model.modality": "text", "train.seed": 4})
    assert (cfg.train.episodes, cfg.train.lr, cfg.model.modality, cfg.train.seed) == (7, 0.01, "text", 5)


def _train_teacher(out: Path) -> Path:
    assert main(["train", "--config", "glyphs_teacher", f"out={out}", *FAST]) == 0
    return out / "glyphs_teacher"


def test_the_reported_reproduction_trains_a_text_student_named_foo_with_kd(tmp_path):
    teacher = _train_teacher(tmp_path)
    assert main(["distill", "--config", "glyphs_distill", "--teacher", str(teacher),
                 "--modality", "text", "--method", "kd", "--name", "foo", f"out={tmp_path}", *FAST]) == 0
    assert not (tmp_path / "glyphs_student_srl").exists()
    tensors, meta = load_checkpoint(tmp_path / "foo" / "best.json")
    assert meta["config"]["name"] == "foo" and meta["config"]["distill"]["method"] == "kd"
    assert meta["spec"]["model"]["modality"] == "text"
    weights = model_state(tensors)
    assert any(k.startswith("text_encoder.") for k in weights)
    assert not any(k.startswith("image_encoder.") for k in weights), "a text student must not see images"


def test_train_modality_flag_over_a_file_that_says_image(tmp_path):
    assert main(["train", "--config", "glyphs_student", "--modality", "text",
                 "--name", "txt", f"out={tmp_path}", *FAST]) == 0
    tensors, meta = load_checkpoint(tmp_path / "txt" / "best.json")
    assert meta["spec"]["model"]["modality"] == "text"
    assert not any(k.startswith("image_encoder.") for k in model_state(tensors))


def test_paper_script_dry_run_lists_unique_runs_with_the_grid_settings(tmp_path):
    env = {**os.environ, "CMKD": str(Path(sys.executable).parent / "cmkd")}
    if not Path(env["CMKD"]).exists():  # cmkd not installed as a script beside this interpreter
        env["CMKD"] = str(tmp_path / "cmkd")
        Path(env["CMKD"]).write_text(f"#!/bin/sh\nexec {sys.executable} -m cmkd.cli \"$@\"\n")
        os.chmod(env["CMKD"], 0o755)
    done = subprocess.run(["bash", str(REPO / "scripts" / "run_paper.sh"), "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    configs = [c for c in yaml.safe_load_all(done.stdout) if c]
    expected = {}
    for bb in ("conv4", "resnet12"):
        for shot in (1, 5):
            expected[f"cub_{bb}_{shot}shot_teacher"] = (bb, shot, "image+text", None)
            for modality in ("image", "text"):
                expected[f"cub_{bb}_{shot}shot_{modality}_cmkd"] = (bb, shot, modality, "srl")
                expected[f"cub_{bb}_{shot}shot_{modality}_alone"] = (bb, shot, modality, None)
            expected[f"cub_{bb}_{shot}shot_image_lsl"] = (bb, shot, "image", None)
            expected[f"cub_{bb}_{shot}shot_image_cmkd_lsl"] = (bb, shot, "image", "srl")
    names = [c["name"] for c in configs]
    assert len(names) == len(set(names)) == len(expected)
    for c in configs:
        bb, shot, modality, method = expected[c["name"]]
        assert (c["model"]["backbone"], c["episode"]["shot"], c["model"]["modality"]) == (bb, shot, modality), c["name"]
        if method is not None:
            assert c["distill"]["method"] == method
            assert c["distill"]["teacher"] == f"runs/cub_{bb}_{shot}shot_teacher"
        assert c["lsl"]["weight"] == (5 if c["name"].endswith("lsl") else 0), c["name"]
    evaluations = re.findall(r"^# evaluate (.*)$", done.stdout, re.M)
    assert len(evaluations) == 8
    for line in evaluations:
        runs = [a.split("=runs/")[1] for a in line.split() if "=runs/" in a]
        assert all(r in expected for r in runs), line


def test_resume_refuses_another_training_config_and_writes_nothing(tmp_path, capsys):
    args = ["train", "--name", "r", f"out={tmp_path}", *FAST]
    assert main(args) == 0
    run = tmp_path / "r"
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    for change, field in [("episode.shot=2", "episode.shot"), ("train.seed=9", "train.seed"),
                          ("model.head=matchingnet", "model.head"), ("data.hflip=true", "data.hflip"),
                          ("train.episodes=3", "train.episodes")]:
        capsys.readouterr()
        assert main([*args, "--resume", change]) == 2, change
        err = capsys.readouterr().err
        assert "refusing to continue" in err and field in err, err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    # a larger budget, threads and placement may change
    assert main([*args, "--resume", "train.episodes=8", "train.threads=1", "data.placement=device"]) == 0
    assert json.loads((run / "last.json").read_text())["step"] == 8


def test_resume_refuses_another_teacher(tmp_path, capsys, monkeypatch):
    t1 = _train_teacher(tmp_path / "a")
    assert main(["train", "--config", "glyphs_teacher", f"out={tmp_path / 'b'}",
                 "train.seed=1", *FAST]) == 0
    t2 = tmp_path / "b" / "glyphs_teacher"
    args = ["distill", "--name", "s", f"out={tmp_path}", *FAST]
    assert main([*args, "--teacher", str(t1)]) == 0
    capsys.readouterr()
    with monkeypatch.context() as m:  # refused before the teacher embeds the base split (a long pass on CUB)
        m.setattr(distiller, "embed_teacher", lambda *a: pytest.fail("the teacher pass ran before the refusal"))
        assert main([*args, "--teacher", str(t2), "--resume", "train.episodes=8"]) == 2
    assert "teacher's weights differ" in capsys.readouterr().err
    moved = tmp_path / "moved_teacher"
    t1.rename(moved)  # the same teacher elsewhere may continue its student
    assert main([*args, "--teacher", str(moved), "--resume", "train.episodes=8"]) == 0


def test_resume_conflicts_lists_fields():
    a = load_config().to_dict()
    b = load_config(overrides=["model.backbone=resnet12", "distill.weight=2", "train.threads=1",
                               "train.episodes=5000", "out=elsewhere"]).to_dict()
    assert resume_conflicts(a, b) == ["distill.weight: 4.0 -> 2.0", "model.backbone: 'conv4' -> 'resnet12'"]


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.email=t@example.org", "-c", "user.name=t", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout.strip()


def test_commit_is_recorded_only_for_a_cmkd_checkout(tmp_path):
    user = tmp_path / "users_project"  # cmkd installed in a venv inside someone else's repository
    installed = user / ".venv" / "lib" / "python3.11" / "site-packages" / "cmkd"
    installed.mkdir(parents=True)
    (user / "notes.txt").write_text("x")
    _git(user, "init", "-q")
    _git(user, "add", "notes.txt")
    _git(user, "commit", "-q", "-m", "user")
    assert source_commit(installed) is None
    checkout = tmp_path / "cmkd_checkout"
    (checkout / "src" / "cmkd").mkdir(parents=True)
    (checkout / "src" / "cmkd" / "__init__.py").write_text("")
    _git(checkout, "init", "-q")
    _git(checkout, "add", ".")
    _git(checkout, "commit", "-q", "-m", "c")
    assert source_commit(checkout / "src" / "cmkd") == _git(checkout, "rev-parse", "HEAD")
    (checkout / "src" / "cmkd" / "__init__.py").write_text("changed")
    assert source_commit(checkout / "src" / "cmkd").endswith("-dirty")


def test_checkpoints_and_results_carry_provenance(tmp_path, capsys):
    import torch

    import cmkd

    assert main(["train", "--name", "p", f"out={tmp_path}", *FAST]) == 0
    meta = json.loads((tmp_path / "p" / "best.json").read_text())
    prov = meta["provenance"]
    assert prov["cmkd"] == cmkd.__version__ and prov["torch"] == torch.__version__
    assert prov["python"] == ".".join(map(str, sys.version_info[:3])) and "cores" in prov["device"]
    assert prov["cpu_capability"] == torch.backends.cpu.get_cpu_capability()  # CPUs of one name may round apart
    out = tmp_path / "ev.json"
    assert main(["evaluate", str(tmp_path / "p"), "--episodes", "5", "--shots", "1", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["provenance"] == provenance("cpu")


def test_paper_script_starts_fresh_runs_and_resumes_existing_ones(tmp_path):
    """`cmkd ... --resume` refuses a folder with no run, so the script passes --resume only where a run exists."""
    log = tmp_path / "calls.txt"
    stub = tmp_path / "cmkd"
    stub.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    os.chmod(stub, 0o755)
    work = tmp_path / "work"
    (work / "scripts").mkdir(parents=True)
    (work / "scripts" / "run_paper.sh").write_text((REPO / "scripts" / "run_paper.sh").read_text())
    (work / "runs" / "cub_conv4_1shot_teacher").mkdir(parents=True)
    (work / "runs" / "cub_conv4_1shot_teacher" / "last.json").write_text("{}")
    done = subprocess.run(["bash", str(work / "scripts" / "run_paper.sh")], env={**os.environ, "CMKD": str(stub)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    teacher = next(c for c in calls if "--name cub_conv4_1shot_teacher" in c)
    fresh = [c for c in calls if c.startswith(("train", "distill")) and c is not teacher]
    assert "--resume" in teacher and fresh and not any("--resume" in c for c in fresh)
