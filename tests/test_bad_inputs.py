"""Bad input and faults, table-driven: each case exits with a clear error that names the file or field,
and no existing run or dataset file changes. (README's reliability paragraph counts these cases.)"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cmkd.checkpoint import RunDirectory
from cmkd.cli import main
from fixtures import make_folder

FAST = ["train.episodes=4", "train.val_every=4", "train.val_episodes=2", "train.val_query=2", "episode.query=2",
        "train.threads=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One tiny run ('r', image student) and one tiny teacher ('t'), trained once."""
    out = tmp_path_factory.mktemp("trained")
    assert main(["train", "--name", "r", f"out={out}", *FAST]) == 0
    assert main(["train", "--name", "t", "--modality", "image+text", f"out={out}", *FAST]) == 0
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """An image folder in the folder format and its prepared cache."""
    root = tmp_path_factory.mktemp("source")
    make_folder(root / "imgs", classes=12, per_class=4)
    return root / "imgs"


@dataclass
class World:
    """A fresh copy of the trained runs and the source folder for one case."""

    runs: Path
    src: Path
    data: Path
    monkeypatch: pytest.MonkeyPatch
    lock: RunDirectory | None = None

    def snapshot(self) -> dict[str, str]:
        files = {}
        for top in (self.runs, self.src, self.data):
            for f in sorted(top.rglob("*")):
                if f.is_file() and f.name != ".lock":
                    files[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
        return files


@pytest.fixture
def world(trained, source, tmp_path, monkeypatch) -> World:
    runs, src, data = tmp_path / "runs", tmp_path / "src", tmp_path / "data"
    shutil.copytree(trained, runs)
    shutil.copytree(source, src)
    data.mkdir()
    monkeypatch.setenv("CMKD_DATA", str(data))
    return World(runs, src, data, monkeypatch)


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def _set_spec(key: str, value) -> Callable[[World], None]:
    def setup(w: World) -> None:
        def edit(meta: dict) -> None:
            node = meta["spec"]
            *path, last = key.split(".")
            for p in path:
                node = node[p]
            node[last] = value
        _edit_json(w.runs / "r" / "best.json", edit)
    return setup


def _write(rel: str, content: bytes | str) -> Callable[[World], None]:
    def setup(w: World) -> None:
        path = w.runs.parent / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return setup


def _hold_lock(w: World) -> None:
    w.lock = RunDirectory(w.runs / "r")
    w.lock.acquire()


def _replace_weights_with(payload: bytes) -> Callable[[World], None]:
    def setup(w: World) -> None:
        meta = json.loads((w.runs / "r" / "best.json").read_text())
        weights = w.runs / "r" / meta["weights_file"]
        weights.write_bytes(payload)
        meta["weights_sha256"] = hashlib.sha256(payload).hexdigest()
        (w.runs / "r" / "best.json").write_text(json.dumps(meta))
        for prev in (w.runs / "r").glob("best.prev.json"):
            prev.unlink()
    return setup


def _torch_save_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    torch.save({"model.x": torch.zeros(2)}, buf)
    return buf.getvalue()


def _groups(value) -> Callable[[World], None]:
    def setup(w: World) -> None:
        groups = json.loads((w.src / "groups.json").read_text())
        groups["class 00"] = value
        (w.src / "groups.json").write_text(json.dumps(groups))
    return setup


def _splits(value) -> Callable[[World], None]:
    def setup(w: World) -> None:
        (w.src / "splits.json").write_text(json.dumps(value))
    return setup


def _prepared(w: World) -> None:
    assert main(["prepare", "folder", "--root", str(w.src), "--size", "16", "--name", "good", "--workers", "1"]) == 0


def _broken_cache(w: World) -> None:
    _prepared(w)
    (w.data / "good" / "images.npy").write_bytes(b"\x93NUMPY garbage")


def _deny_image_read(w: World) -> None:
    import os

    import cmkd.data.images as images

    target = str(w.src / "class 00" / "img1.png")
    real = os.access
    w.monkeypatch.setattr(images.os, "access", lambda p, mode: False if str(p) == target else real(p, mode))


def _other_dataset_run(w: World) -> None:
    _prepared(w)
    assert main(["train", "--name", "other", f"out={w.runs}", "data.dataset=good", "data.image_size=16",
                 "episode.way=2", "train.val_query=1", "episode.query=1", "train.episodes=2", "train.val_every=2",
                 "train.val_episodes=2"]) == 0


@dataclass
class Case:
    name: str
    argv: Callable[[World], list[str]]
    message: str  # a regular expression the error must match (names the file or field)
    setup: Callable[[World], None] | None = None
    code: int = 2


def R(w: World) -> str:  # noqa: N802 - short helper for the table
    return f"out={w.runs}"


CASES = [
    # -- run folders: nothing is lost ------------------------------------------------------------------
    Case("retrain an existing run without --resume", lambda w: ["train", "--name", "r", R(w), *FAST],
         r"runs/r already holds a run; pass --resume to continue it, --overwrite to replace it"),
    Case("a second process on the same run", lambda w: ["train", "--name", "r", R(w), "--resume", *FAST],
         r"runs/r is in use by process \d+", setup=_hold_lock),
    Case("episodes=-5 on an existing run", lambda w: ["train", "--name", "r", R(w), "--resume", *FAST,
                                                      "train.episodes=-5"], r"'train.episodes' must be at least 1"),
    Case("episodes=0", lambda w: ["train", "--name", "r", R(w), *FAST, "train.episodes=0"],
         r"'train.episodes' must be at least 1"),
    Case("lr=nan", lambda w: ["train", "--name", "x", R(w), *FAST, "train.lr=nan"],
         r"'train.lr' must be a finite number"),
    Case("val_episodes=0", lambda w: ["train", "--name", "x", R(w), *FAST, "train.val_episodes=0"],
         r"'train.val_episodes' must be at least 1"),
    Case("resume with another config", lambda w: ["train", "--name", "r", R(w), "--resume", *FAST,
                                                  "episode.shot=3"], r"refusing to continue.*episode.shot: 1 -> 3"),
    Case("run name with '..'", lambda w: ["train", "--name", "../../x", R(w), *FAST],
         r"config field 'name' '../../x' must be a plain folder name"),
    Case("run name with a separator", lambda w: ["train", R(w), "name=a/b", *FAST],
         r"config field 'name' 'a/b' must be a plain folder name"),
    Case("an output folder that cannot be written", lambda w: ["train", "--name", "x", "out=/proc/cmkd", *FAST],
         r"cannot write to /proc/cmkd"),
    # -- checkpoints -----------------------------------------------------------------------------------
    Case("spec in_channels of a million", lambda w: ["evaluate", str(w.runs / "r"), "--episodes", "2"],
         r"best.json: field 'spec.in_channels' must be a whole number", setup=_set_spec("in_channels", 10**6)),
    Case("spec image_size of the wrong type", lambda w: ["evaluate", str(w.runs / "r"), "--episodes", "2"],
         r"best.json: field 'spec.image_size' must be a whole number", setup=_set_spec("image_size", "big")),
    Case("spec head of the wrong type", lambda w: ["evaluate", str(w.runs / "r"), "--episodes", "2"],
         r"best.json: its 'spec' does not describe a model.*spec.model.head", setup=_set_spec("model.head", 5)),
    Case("spec that does not match the weights", lambda w: ["evaluate", str(w.runs / "r"), "--episodes", "2"],
         r"best.json: its 'spec' does not match its weights", setup=_set_spec("model.backbone", "resnet12")),
    Case("weights_file '..'", lambda w: ["evaluate", str(w.runs / "r"), "--episodes", "2"],
         r"best.json: field 'weights_file' must name a .safetensors file",
         setup=lambda w: _edit_json(w.runs / "r" / "best.json", lambda m: m.update(weights_file=".."))),
    Case("a pickle renamed to .safetensors", lambda w: ["evaluate", str(w.runs / "r"), "--episodes", "2"],
         r"\.safetensors", setup=_replace_weights_with(pickle.dumps({"x": 1}))),
    Case("a torch.save file renamed to .safetensors", lambda w: ["evaluate", str(w.runs / "r"), "--episodes", "2"],
         r"\.safetensors", setup=_replace_weights_with(_torch_save_bytes())),
    Case("not a run or checkpoint", lambda w: ["evaluate", str(w.runs / "nothing")],
         r"neither a run directory nor a checkpoint"),
    Case("evaluate output that cannot be written", lambda w: ["evaluate", str(w.runs / "r"), "--out",
                                                             "/proc/cmkd/ev.json"], r"cannot write to /proc/cmkd"),
    Case("evaluate runs of different datasets", lambda w: ["evaluate", f"a={w.runs / 'r'}",
                                                          f"b={w.runs / 'other'}", "--episodes", "2"],
         r"b\[0\] was trained on .*'good'.* but a\[0\]", setup=_other_dataset_run),
    Case("distill from a one-modality teacher", lambda w: ["distill", "--teacher", str(w.runs / "r"), "--name", "s",
                                                          R(w), *FAST], r"teacher at .*runs/r sees only image"),
    # -- configs ---------------------------------------------------------------------------------------
    Case("unknown config key", lambda w: ["train", R(w), "train.epsiodes=5"],
         r"unknown config key 'train.epsiodes' \(did you mean 'train.episodes'\?\)"),
    Case("missing config file", lambda w: ["train", "--config", str(w.runs.parent / "nope.yaml")],
         r"nope.yaml does not exist"),
    Case("YAML syntax error", lambda w: ["train", "--config", str(w.runs.parent / "bad.yaml")],
         r"bad.yaml is not valid YAML at line 2", setup=_write("bad.yaml", "train:\n  lr: 0.1: 2\n")),
    Case("binary file as config", lambda w: ["train", "--config", str(w.runs.parent / "bin.yaml")],
         r"bin.yaml is not a UTF-8 text file", setup=_write("bin.yaml", b"\xff\xfe\x00\x81binary")),
    Case("YAML python tag is never executed", lambda w: ["train", "--config", str(w.runs.parent / "tag.yaml")],
         r"tag.yaml is not valid YAML", setup=_write("tag.yaml", "name: !!python/object/apply:os.system ['x']\n")),
    Case("way larger than the classes", lambda w: ["train", R(w), "--name", "x", "episode.way=5000", *FAST],
         r"way=5000 is larger than the"),
    # -- datasets --------------------------------------------------------------------------------------
    Case("groups.json value null", lambda w: ["prepare", "folder", "--root", str(w.src), "--size", "16"],
         r"groups.json: the group of class 'class 00' must be a non-empty string", setup=_groups(None)),
    Case("groups.json value an object", lambda w: ["prepare", "folder", "--root", str(w.src), "--size", "16"],
         r"groups.json: the group of class 'class 00' must be a non-empty string", setup=_groups({"a": 1})),
    Case("splits.json base is a number", lambda w: ["prepare", "folder", "--root", str(w.src), "--size", "16"],
         r"splits.json: split 'base' must be a list of class names", setup=_splits({"base": 5})),
    Case("splits.json base is one string", lambda w: ["prepare", "folder", "--root", str(w.src), "--size", "16"],
         r"splits.json: split 'base' must be a list of class names", setup=_splits({"base": "class 00"})),
    Case("prepare --name with '..'", lambda w: ["prepare", "folder", "--root", str(w.src), "--name", "../../x"],
         r"--name '../../x' must be a plain folder name"),
    Case("unreadable image", lambda w: ["prepare", "folder", "--root", str(w.src), "--size", "16"],
         r"class 00/img1.png cannot be read \(permission denied\)", setup=_deny_image_read),
    Case("corrupt image", lambda w: ["prepare", "folder", "--root", str(w.src), "--size", "16"],
         r"class 00/img2.png is truncated or corrupt",
         setup=lambda w: (w.src / "class 00" / "img2.png").write_bytes(
             (w.src / "class 00" / "img2.png").read_bytes()[:60])),
    Case("a prepared cache whose images.npy is damaged", lambda w: ["train", R(w), "--name", "x",
                                                                    "data.dataset=good", "data.image_size=16", *FAST],
         r"good/images.npy cannot be used", setup=_broken_cache),
    Case("a missing dataset", lambda w: ["train", R(w), "--name", "x", "data.dataset=nowhere", *FAST],
         r"data.dataset='nowhere' is neither 'glyphs' nor a prepared dataset"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_clearly_and_loses_nothing(case: Case, world: World, capsys):
    if case.setup is not None:
        case.setup(world)
    before = world.snapshot()
    capsys.readouterr()
    argv = case.argv(world)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == case.code, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith(f"cmkd {argv[0]}: error: ")]
    assert len(errors) == 1, f"one clear error line expected:\n{err}"
    message = err[err.index(errors[0]):]  # the error line and its continuation lines
    assert re.search(case.message, message, re.S), err
    assert world.snapshot() == before, "an existing run or dataset file changed"


def test_datasets_lists_the_good_ones_when_one_cache_is_broken(world, capsys):
    _prepared(world)
    assert main(["prepare", "folder", "--root", str(world.src), "--size", "16", "--name", "bad",
                 "--workers", "1"]) == 0
    (world.data / "bad" / "images.npy").write_bytes(b"junk")
    capsys.readouterr()
    assert main(["datasets"]) == 0
    out, err = capsys.readouterr()
    assert "good: 12 classes, 48 images" in out
    assert "bad: unusable: " in err and "bad/images.npy cannot be used" in err


def test_overwrite_replaces_and_resume_continues(world):
    old = json.loads((world.runs / "r" / "best.json").read_text())["weights_sha256"]
    assert main(["train", "--name", "r", f"out={world.runs}", "--overwrite", *FAST, "train.seed=5"]) == 0
    new = json.loads((world.runs / "r" / "best.json").read_text())
    assert new["weights_sha256"] != old and new["config"]["train"]["seed"] == 5
    assert not (world.runs / "r" / "best.prev.json").exists() or \
        json.loads((world.runs / "r" / "best.prev.json").read_text())["config"]["train"]["seed"] == 5


def test_resume_repairs_a_damaged_best_and_records_it(world):
    run = world.runs / "r"
    assert main(["train", "--name", "r", f"out={world.runs}", "--resume", *FAST, "train.episodes=8"]) == 0
    meta = json.loads((run / "best.json").read_text())
    (run / meta["weights_file"]).write_bytes(b"damaged")
    assert main(["train", "--name", "r", f"out={world.runs}", "--resume", *FAST, "train.episodes=12"]) == 0
    last = json.loads((run / "last.json").read_text())
    assert any("best.json was damaged" in note for note in last["recovered"])
    from cmkd.checkpoint import load_checkpoint

    load_checkpoint(run / "best.json")  # points at good weights again


def test_evaluate_records_a_fallback_to_the_previous_checkpoint(world, tmp_path):
    from cmkd.checkpoint import load_model, save_checkpoint

    run = world.runs / "r"
    model, meta = load_model(run)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)  # other weights: another weights file
    save_checkpoint(run / "best", model, {k: v for k, v in meta.items() if k != "loaded_from"})
    meta = json.loads((run / "best.json").read_text())
    assert (run / "best.prev.json").exists()
    (run / meta["weights_file"]).write_bytes(b"damaged")
    out = tmp_path / "ev.json"
    with pytest.warns(UserWarning, match="falling back to the previous checkpoint"):
        assert main(["evaluate", str(run), "--episodes", "2", "--shots", "1", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["checkpoints"]["r[0]"].endswith("best.prev.json")


def test_predict_prints_one_line_per_query_even_with_a_newline_in_a_name(world, tmp_path, capsys):
    support = tmp_path / "support"
    for cls in ("a", "b"):
        (support / cls).mkdir(parents=True)
        Image.fromarray(np.full((32, 32), 40 if cls == "a" else 200, np.uint8)).save(support / cls / "1.png")
    query = tmp_path / "q\nx.png"
    Image.fromarray(np.full((32, 32), 40, np.uint8)).save(query)
    capsys.readouterr()
    assert main(["predict", "--model", str(world.runs / "r"), "--support", str(support), "--query", str(query)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "q\\nx.png" in lines[0]
