"""Bad input and faults, table-driven: each case exits with a clear error that names the file or field,
and no existing run or dataset file changes. (README's reliability paragraph counts these cases.)"""

from __future__ import annotations

import hashlib
import json
import os
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

from cmkd.cli import main
from cmkd.run_folder import RunDirectory
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
                if f.is_file() and not f.name.endswith(".lock"):  # empty lock files hold no data
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
            meta.pop("spec_sha256", None)  # as written by cmkd before specs were checksummed
        _edit_json(w.runs / "r" / "best.json", edit)
    return setup


def _edit_spec_keeping_checksum(w: World) -> None:
    _edit_json(w.runs / "r" / "best.json", lambda m: m["spec"].update(image_size=64))


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


def _thin_png(w: World) -> None:
    """A few KB that would resize to 32 x 96M pixels (the resize bomb)."""
    Image.new("L", (1, 3_000_000), 0).save(w.src / "class 00" / "thin.png")


def _nan_tiff(w: World) -> None:
    Image.fromarray(np.full((32, 32), np.nan, np.float32)).save(w.runs.parent / "nan.tiff")
    for cls in ("a", "b"):
        (w.runs.parent / "support" / cls).mkdir(parents=True)
        Image.fromarray(np.full((32, 32), 40 if cls == "a" else 200, np.uint8)).save(
            w.runs.parent / "support" / cls / "1.png")


def _meta_unknown_split_class(w: World) -> None:
    _prepared(w)
    _edit_json(w.data / "good" / "meta.json", lambda m: m["splits"]["novel"].append(99999))


def _rechannelled(w: World) -> None:
    _other_dataset_run(w)  # trained on 3-channel images
    assert main(["prepare", "folder", "--root", str(w.src), "--size", "16", "--name", "good", "--workers", "1",
                 "--channels", "1"]) == 0


def _corrupt_after_prepare(w: World) -> None:
    _prepared(w)
    img = w.src / "class 01" / "img0.png"
    img.write_bytes(img.read_bytes()[:60])


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
         r"b\[0\] was trained on .*/good'.* but a\[0\]", setup=_other_dataset_run),
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
    # -- the review of 2026-11-30 (B: bad, W: weak): one row per case that ends in an error ------------------
    Case("B1 a boolean for a whole number", lambda w: ["train", R(w), "--name", "x", *FAST, "train.episodes=true"],
         r"'train.episodes' takes a whole number, got True"),
    Case("B2 episode.fine_grained (never read by training)", lambda w: ["train", R(w), "--name", "x", *FAST,
                                                                        "episode.fine_grained=true"],
         r"'episode.fine_grained' does not exist: training draws fine-grained episodes with train.fine_grained_share"),
    Case("B3 train with a teacher configured", lambda w: ["train", "--config", "glyphs_distill", R(w), "--name", "x",
                                                          *FAST, f"distill.teacher={w.runs / 't'}"],
         r"'distill.method' is read only by `cmkd distill`"),
    Case("B6 a spec edited after saving", lambda w: ["evaluate", str(w.runs / "r"), "--episodes", "2"],
         r"its 'spec' \(the model description\) does not match its checksum", setup=_edit_spec_keeping_checksum),
    Case("B7 --init from another model", lambda w: ["distill", "--teacher", str(w.runs / "t"), "--init",
                                                    str(w.runs / "t"), "--name", "s", R(w), *FAST],
         r"--init: the checkpoint holds another model.*model.modality: 'image\+text' in the checkpoint, 'image'"),
    Case("B8 a resize bomb in predict", lambda w: ["predict", "--model", str(w.runs / "r"), "--support",
                                                   str(w.runs.parent / "support"), "--query",
                                                   str(w.src / "class 00" / "thin.png")],
         r"thin.png is 1x3000000 pixels: .* over the 16 Mpx budget", setup=lambda w: (_thin_png(w), _nan_tiff(w))),
    Case("B10 a resize bomb in prepare", lambda w: ["prepare", "folder", "--root", str(w.src), "--size", "16",
                                                    "--workers", "1"],
         r"thin.png is 1x3000000 pixels.*--skip-bad", setup=_thin_png),
    Case("B12 a failed prepare keeps the old cache", lambda w: ["prepare", "folder", "--root", str(w.src), "--size",
                                                                "16", "--name", "good", "--workers", "1"],
         r"class 01/img0.png is truncated or corrupt", setup=_corrupt_after_prepare),
    Case("B15 a teacher and a student pooled as seeds", lambda w: ["evaluate", f"mix={w.runs / 't'},{w.runs / 'r'}",
                                                                   "--episodes", "2"],
         r"mix pools .* which are not runs of one method \(differ in model"),
    Case("W1 a number as a run name", lambda w: ["train", R(w), *FAST, "name=12345"],
         r"'name' takes text, got 12345; quote it to mean text"),
    Case("W2 a key given twice in a config file", lambda w: ["train", "--config", str(w.runs.parent / "dup.yaml")],
         r"dup.yaml is not valid YAML at line 1.*key 'episodes' is given twice",
         setup=_write("dup.yaml", "train: {episodes: 10, episodes: 20}\n")),
    Case("W3 a seed past 64 bits", lambda w: ["train", R(w), "--name", "x", *FAST,
                                              "train.seed=18446744073709551616"], r"'train.seed' must be .* at most"),
    Case("W4 threads past 32 bits", lambda w: ["train", R(w), "--name", "x", *FAST, "train.threads=4294967296"],
         r"'train.threads' must be .* at most 1024"),
    Case("W5 more val queries than a val class has images", lambda w: ["train", R(w), "--name", "x", *FAST,
                                                                        "train.val_query=100"],
         r"class\(es\) of the val split have fewer images.*validation: train.val_query"),
    Case("W6 a device that does not exist", lambda w: ["train", R(w), "--name", "x", *FAST, "--device", "foo"],
         r"--device 'foo' is not a device"),
    Case("W7 cuda on a CPU torch", lambda w: ["train", R(w), "--name", "x", *FAST, "--device", "cuda"],
         r"--device cuda: this torch .* sees no CUDA device; use --device cpu"),
    Case("W8 an embedding of ten billion", lambda w: ["train", R(w), "--name", "x", *FAST,
                                                      "model.embed_dim=10000000000"], r"'model.embed_dim' must be"),
    Case("W9 more episodes per step than episodes", lambda w: ["train", R(w), "--name", "x", *FAST,
                                                               "train.episodes_per_step=100"],
         r"'train.episodes_per_step' \(100\) is more than train.episodes"),
    Case("W11 an override that is not YAML", lambda w: ["config", "show", "glyphs_student", "train.lr=[0.1"],
         r"override 'train.lr=\[0.1': the value is not a YAML scalar"),
    Case("W12 a YAML tag in an override", lambda w: ["config", "show", "glyphs_student",
                                                     "name=!!python/object/apply:os.system [x]"],
         r"override 'name=!!python.*': the value is not a YAML scalar"),
    Case("W13 a list as the teacher", lambda w: ["distill", "--config", "glyphs_distill", R(w), "--name", "x", *FAST,
                                                 "distill.teacher=[a,b]"], r"'distill.teacher' takes text"),
    Case("W14 a run name that is not UTF-8", lambda w: ["train", R(w), "--name", "bad\udcff\udcfename", *FAST],
         r"is not valid UTF-8 text"),
    Case("W17 --resume of a run that does not exist", lambda w: ["train", R(w), "--name", "never", "--resume", *FAST],
         r"--resume: .*never holds no run to resume"),
    Case("W18 --resume with --overwrite", lambda w: ["train", R(w), "--name", "r", "--resume", "--overwrite", *FAST],
         r"--resume continues the run and --overwrite replaces it; choose one"),
    Case("W19 a folder where the lock file goes", lambda w: ["train", R(w), "--name", "lockdir", *FAST],
         r"lockdir/.lock is a folder, not a lock file", setup=lambda w: (w.runs / "lockdir" / ".lock").mkdir(
             parents=True)),
    Case("W20 an image of NaN pixels", lambda w: ["predict", "--model", str(w.runs / "r"), "--support",
                                                  str(w.runs.parent / "support"), "--query",
                                                  str(w.runs.parent / "nan.tiff")],
         r"nan.tiff holds NaN or infinite pixel values", setup=_nan_tiff),
    Case("W23 meta.json naming a class that does not exist", lambda w: ["train", R(w), "--name", "x",
                                                                         "data.dataset=good", "data.image_size=16",
                                                                         *FAST],
         r"good/meta.json cannot be used .*unknown class indices \[99999\]", setup=_meta_unknown_split_class),
    Case("W24 splits.json without val", lambda w: ["prepare", "folder", "--root", str(w.src), "--size", "16"],
         r"the 'val' split has 0 class\(es\)", setup=_splits({"base": [f"class {i:02d}" for i in range(9)],
                                                               "novel": ["class 09", "class 10", "class 11"]})),
    Case("W25 a class in two splits", lambda w: ["prepare", "folder", "--root", str(w.src), "--size", "16"],
         r"class 'class 00' is in both the 'base' and the 'val' split",
         setup=_splits({"base": ["class 00", "class 01"], "val": ["class 00", "class 02"], "novel": ["class 03"]})),
    Case("W26 a single group", lambda w: ["prepare", "folder", "--root", str(w.src), "--size", "16"],
         r"split has 0 class\(es\).*give groups.json at least 3 groups",
         setup=lambda w: ((w.src / "splits.json").unlink(), (w.src / "groups.json").write_text(
             json.dumps({f"class {i:02d}": "one" for i in range(12)})))),
    Case("W27 --size 0", lambda w: ["prepare", "folder", "--root", str(w.src), "--size", "0"],
         r"--size 0: the image side must be from 8 to 1024"),
    Case("W28 --size -5", lambda w: ["prepare", "folder", "--root", str(w.src), "--size", "-5"],
         r"--size -5: the image side must be from 8 to 1024"),
    Case("W29 --workers -1", lambda w: ["prepare", "folder", "--root", str(w.src), "--size", "16", "--workers", "-1"],
         r"--workers -1: use from 1 to 256"),
    Case("W30 --seed -1", lambda w: ["prepare", "folder", "--root", str(w.src), "--size", "16", "--seed", "-1"],
         r"--seed -1 must be from 0"),
    Case("W31 --size 100000", lambda w: ["prepare", "folder", "--root", str(w.src), "--size", "100000"],
         r"--size 100000: the image side must be from 8 to 1024"),
    Case("W33 evaluate --episodes 0", lambda w: ["evaluate", str(w.runs / "r"), "--episodes", "0"],
         r"--episodes 0 must be from 1"),
    Case("W34 an unknown --reference", lambda w: ["evaluate", f"a={w.runs / 'r'}", f"b={w.runs / 't'}",
                                                  "--reference", "zzz", "--episodes", "2"],
         r"--reference 'zzz' is none of the methods \(a, b\)"),
    Case("W35 evaluate --out a folder", lambda w: ["evaluate", str(w.runs / "r"), "--out", str(w.runs)],
         r"--out .* is a folder; name the results file"),
    Case("W36 a dataset prepared again with other channels", lambda w: ["evaluate", str(w.runs / "other"),
                                                                        "--episodes", "2", "--way", "2", "--query",
                                                                        "1", "--shots", "1"],
         r"other\[0\] was trained on 3-channel 16px images, but good now has 1-channel", setup=_rechannelled),
    Case("W40 a teacher of other captions", lambda w: ["distill", "--teacher", str(w.runs / "t"), "--name", "s", R(w),
                                                       "data.captions=names", *FAST],
         r"runs/t/best.json was trained with data.captions=dataset but the student's data has data.captions=names: "
         r"the teacher would read .* give the student data.captions=dataset too"),
    Case("W39 a teacher of other images", lambda w: ["distill", "--teacher", str(w.runs / "t"), "--name", "s", R(w),
                                                     "data.dataset=good", "data.image_size=16", *FAST],
         r"the teacher sees 1-channel 32px images but good has 3-channel 16px images", setup=_prepared),
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


# -- named cases of the 2026-11-30 review that do not fit the table ----------------------------------------------


def _train(w: World, name: str, *extra: str) -> int:
    return main(["train", "--name", name, f"out={w.runs}", *FAST, *extra])


@pytest.mark.parametrize("kill", ["between best and last", "after best was moved to best.prev"])
def test_b4_a_kill_at_a_checkpoint_write_resumes_to_the_uninterrupted_best(world, kill):
    """best.json is written before last.json, so a kill between them leaves last one validation behind: the
    resumed run replays that validation and ends with the uninterrupted run's best weights."""
    assert _train(world, "u", "train.episodes=8") == 0
    killed = world.runs / "k"
    shutil.copytree(world.runs / "u", killed)
    (killed / ".lock").unlink(missing_ok=True)
    os.replace(killed / "last.prev.json", killed / "last.json")  # last is at step 4, as before the kill
    if kill != "between best and last":
        os.replace(killed / "best.json", killed / "best.prev.json")
    assert _train(world, "k", "train.episodes=8", "--resume") == 0
    weights = [json.loads((world.runs / r / "best.json").read_text())["weights_sha256"] for r in ("u", "k")]
    assert weights[0] == weights[1]
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [json.loads(line)["step"] for line in (world.runs / "u" / "metrics.jsonl").read_text()
                     .splitlines()], "W15: each step is logged once after a resume"


@pytest.mark.parametrize("entry", [".lock", "config.json", "metrics.jsonl", "last.json", "best.json"])
def test_b5_a_link_planted_in_a_run_folder_is_refused_and_its_target_untouched(world, tmp_path, capsys, entry):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (world.runs / "sym").mkdir()
    (world.runs / "sym" / entry).symlink_to(victim)
    capsys.readouterr()
    assert _train(world, "sym") == 2
    assert f"sym/{entry} is a symbolic link; cmkd does not write through links" in capsys.readouterr().err
    assert victim.read_text() == "precious"


def test_b11_links_planted_in_a_dataset_cache_are_never_written_through(world, tmp_path, capsys):
    victim, other = tmp_path / "victim.txt", tmp_path / "victim2.txt"
    victim.write_text("precious")
    other.write_text("precious too")
    cache = world.data / "symprep"
    cache.mkdir()
    (cache / ".images.npy.tmp").symlink_to(victim)  # the old fixed scratch name
    (cache / "captions.json").symlink_to(other)
    argv = ["prepare", "folder", "--root", str(world.src), "--size", "16", "--name", "symprep", "--workers", "1"]
    assert main(argv) == 2 and "is not a cmkd dataset cache" in capsys.readouterr().err
    (cache / ".images.npy.tmp").unlink()
    assert main(argv) == 0  # a cache folder whose captions.json is a link: replaced whole, the link not followed
    assert victim.read_text() == "precious" and other.read_text() == "precious too"
    assert not (cache / "captions.json").is_symlink() and json.loads((cache / "captions.json").read_text())["labels"]


def test_b13_a_changed_channel_count_rebuilds_the_cache(world):
    from cmkd.data.cache import load_prepared

    base = ["prepare", "folder", "--root", str(world.src), "--size", "16", "--name", "ch", "--workers", "1"]
    assert main([*base, "--channels", "3"]) == 0
    assert main([*base, "--channels", "1"]) == 0
    assert load_prepared(world.data / "ch").image_shape == (1, 16, 16)


def test_b14_two_prepares_of_one_name_at_once_leave_a_consistent_cache(world, tmp_path):
    """Two processes prepare different trees under one name: the lock serialises them; every row of the final
    cache is the image of the file its captions.json names."""
    import subprocess
    import sys

    from cmkd.data.cache import load_prepared
    from cmkd.data.images import load_image

    other = tmp_path / "inverted"
    shutil.copytree(world.src, other)
    for img in other.rglob("*.png"):
        Image.fromarray(255 - np.asarray(Image.open(img))).save(img)
    procs = [subprocess.Popen([sys.executable, "-m", "cmkd", "prepare", "folder", "--root", str(root), "--size", "16",
                               "--name", "race", "--workers", "1"], env={**os.environ, "CMKD_DATA": str(world.data)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for root in (world.src, other)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    ds = load_prepared(world.data / "race")
    for row, file in enumerate(ds.files):
        assert np.array_equal(ds.images[row].numpy(), load_image(file, 3, 16)), f"row {row} is not {file}"
    assert not [p for p in world.data.iterdir() if p.name.startswith(".race.prepare")], "no scratch left"


def test_w10_a_diverging_run_ends_in_one_line_naming_the_fix(world, capsys, monkeypatch):
    from cmkd.models.fewshot import FewShotModel

    real = FewShotModel.loss_terms
    monkeypatch.setattr(FewShotModel, "loss_terms", lambda *a: {k: v * float("nan") for k, v in real(*a).items()})
    capsys.readouterr()
    assert _train(world, "div", "train.episodes=8") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "cmkd train: error: loss became nan" in err and "lower train.lr" in err


def test_w32_w38_evaluate_counts_identical_weights_once_and_says_when_data_changed(world, tmp_path, capsys):
    _other_dataset_run(world)
    img = world.src / "class 01" / "img0.png"
    Image.fromarray(255 - np.asarray(Image.open(img))).save(img)  # the same name, other content
    _prepared(world)
    out = tmp_path / "ev.json"
    capsys.readouterr()
    assert main(["evaluate", f"dup={world.runs / 'other'},{world.runs / 'other'}", "--episodes", "2", "--way", "2",
                 "--query", "1", "--shots", "1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["runs_per_method"] == {"dup": 1} and "holds the same weights as" in err
    assert "was trained on other content under the name 'good'" in err


def test_b9_w21_w22_a_damaged_minilm_cache_is_recomputed_with_a_warning(tmp_path, monkeypatch, caplog):
    from safetensors.torch import save_file

    from cmkd.models.text_encoders import MiniLM

    monkeypatch.setenv("CMKD_CACHE", str(tmp_path))
    texts = ["a bird", "a red bird"]
    truth = torch.arange(2 * 384, dtype=torch.float32).view(2, 384)
    monkeypatch.setattr("cmkd.models.text_encoders.encode_minilm", lambda t: truth.clone())
    enc = MiniLM(out_dim=4)
    assert torch.equal(enc.prepare(texts), truth)
    path = MiniLM.cache_path(texts)
    for damage in (lambda: save_file({"embeddings": torch.zeros(2, 384)}, str(path)),  # B9: well-formed, wrong
                   lambda: path.write_bytes(path.read_bytes()[:1000]),  # W21: truncated
                   lambda: save_file({"embeddings": torch.zeros(3, 7)}, str(path))):  # W22: another shape
        enc.prepare(texts)
        damage()
        caplog.clear()
        with caplog.at_level("WARNING", logger="cmkd"):
            assert torch.equal(enc.prepare(texts), truth)
        assert f"MiniLM cache {path} is damaged" in caplog.text


def test_w16_a_full_disk_while_checkpointing_is_one_line_and_resumable(world, tmp_path):
    """A file-size limit stands in for a full disk (EFBIG): the write fails with a message naming the file."""
    import resource
    import signal
    import subprocess
    import sys

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    done = subprocess.run([sys.executable, "-m", "cmkd", "train", "--name", "full", f"out={world.runs}", *FAST],
                          preexec_fn=limit, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert re.search(r"cmkd train: error: cannot write .*full/.*File too large.*--resume", done.stderr)
    assert not [f for f in (world.runs / "full").iterdir() if f.name.endswith(".tmp")], "no scratch file left"


def test_w37_runs_named_by_dataset_name_and_by_path_are_compared(world, tmp_path):
    _other_dataset_run(world)
    assert main(["train", "--name", "bypath", f"out={world.runs}", f"data.dataset={world.data / 'good'}",
                 "data.image_size=16", "episode.way=2", "train.val_query=1", "episode.query=1", "train.episodes=2",
                 "train.val_every=2", "train.val_episodes=2"]) == 0
    assert main(["evaluate", f"a={world.runs / 'other'}", f"b={world.runs / 'bypath'}", "--episodes", "2", "--way",
                 "2", "--query", "1", "--shots", "1", "--out", str(tmp_path / "ev.json")]) == 0
