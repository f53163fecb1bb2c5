"""A user's first hour: the CLI's help and config commands, training logs, the Python API."""

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import cmkd
from cmkd.cli import build_parser, main
from cmkd.config import field_help, load_config
from cmkd.errors import CheckpointError

FAST = ["train.episodes=20", "train.val_every=10", "train.val_episodes=4", "train.val_query=2", "episode.query=2"]


def test_version_and_python_dash_m(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"cmkd {cmkd.__version__}"
    done = subprocess.run([sys.executable, "-m", "cmkd", "config", "list"], capture_output=True, text=True)
    assert done.returncode == 0 and "glyphs_teacher" in done.stdout and "cub/conv4_cmkd" in done.stdout


def test_help_shows_defaults_and_examples_of_its_own_command(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = capsys.readouterr().out
    assert "(default: 600)" in text and "cmkd evaluate runs/glyphs_student" in text
    assert "cmkd train" not in text and "(default: None)" not in text and "(default: False)" not in text
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = capsys.readouterr().out
    assert "cmkd predict --model" in text and "--model MODEL         student run" in text
    assert "(default: None)" not in text
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert all(f"cmkd {c}" in text for c in ("train", "distill", "evaluate", "predict", "export", "prepare"))
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {a.dest}" for name, sp in sub.choices.items() for a in sp._actions if not a.help]
    assert not missing, f"options without help: {missing}"


def test_config_show_keys_and_list(capsys):
    assert main(["config", "show", "glyphs_teacher", "train.lr=0.01"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["name"] == "glyphs_teacher" and shown["train"]["lr"] == 0.01
    assert shown == load_config("glyphs_teacher", ["train.lr=0.01"]).to_dict()
    assert main(["config", "show", "train.seed=3"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["train"]["seed"] == 3
    assert main(["config", "keys"]) == 0
    keys = capsys.readouterr().out
    help_ = field_help()
    assert all(text for text in (t for _, t in help_.values())), [k for k, (_, t) in help_.items() if not t]
    assert "distill.srl.tau" in keys and "temperature" in keys


def test_training_writes_metrics_and_a_curve_without_changing_threads(tmp_path, small, fast_cfg):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = cmkd.Trainer(fast_cfg(**{"train.episodes": 40, "train.val_every": 20, "train.threads": 2}), small)
        trainer.fit(progress=False, read_every=5)
        assert torch.get_num_threads() == 1, "Trainer.fit must not change process-wide settings"
    finally:
        torch.set_num_threads(threads)
    lines = [json.loads(x) for x in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    kinds = [x["kind"] for x in lines]
    assert kinds.count("val") == 2 and kinds.count("train") >= 8
    assert [x["val_acc"] for x in lines if x["kind"] == "val"] == [h["val_acc"] for h in trainer.history]
    assert (trainer.run_dir / "val_curve.png").read_bytes()[:4] == b"\x89PNG"


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(2), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_a_users_own_image_encoder_trains_and_is_named_in_checkpoints(small, fast_cfg):
    cfg = fast_cfg(**{"train.episodes": 30, "train.val_every": 30})
    model = cmkd.build_model(cfg.model, small, image_encoder=TinyNet())
    assert model.out_dim == 128
    trainer = cmkd.Trainer(cfg, small, init=model)
    first = [p.clone() for p in model.image_encoder.parameters()]
    trainer.fit(progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(first, trainer.model.image_encoder.parameters()))
    with pytest.raises(CheckpointError, match=r"your own image encoder \(TinyNet\)"):
        cmkd.load_model(trainer.run_dir)


def test_public_names_resolve():
    for name in cmkd.__all__:
        assert getattr(cmkd, name) is not None
    with pytest.raises(AttributeError):
        cmkd.nothing_here  # noqa: B018
    assert np.isfinite(cmkd.spatial_relation_loss(torch.zeros(1, 2, 2), torch.ones(1, 2, 2), torch.rand(1, 4, 3),
                                                  torch.rand(1, 4, 5), cmkd.SRLConfig()).item())


def test_the_command_line_starts_without_importing_torch():
    """`cmkd --help`, `config` and `--print-config` answer at once: torch is imported only by the commands that
    compute (each subprocess of `run_paper.sh --dry-run` would otherwise pay seconds)."""
    import subprocess
    import sys

    code = ("import sys; from cmkd.cli import main; main(['config', 'show', 'glyphs_student']); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"
