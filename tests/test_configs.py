"""Every shipped config loads, and the CUB paper configs run on a fixture in CUB's real layout."""

import json

import pytest

from cmkd.cli import main
from cmkd.config import load_config, shipped_configs
from cmkd.errors import ConfigError
from fixtures import make_cub

CONFIGS = shipped_configs()


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_config_loads_by_name_and_by_path(name):
    cfg = load_config(name)
    assert cfg.name and cfg.train.episodes > 0
    assert load_config(CONFIGS[name]) == cfg == load_config(f"{name}.yaml")


def test_an_unknown_config_name_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="glyphs_teachr does not exist and is no shipped config; shipped: .*"
                                          "glyphs_teacher"):
        load_config("glyphs_teachr")


@pytest.mark.parametrize("backbone", ["conv4", "resnet12"])
def test_cub_paper_configs_run_on_a_fixture(backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("CMKD_DATA", str(tmp_path / "data"))
    src = tmp_path / "src"
    make_cub(src, per_class=3, missing_caption=False)
    assert main(["prepare", "cub", "--root", str(src), "--captions", str(src / "text_c10"), "--skip-bad",
                 "--size", "84", "--name", "cub_84", "--workers", "2"]) == 0
    tiny = [f"out={tmp_path / 'runs'}", "train.episodes=1", "train.val_every=1", "train.val_episodes=2",
            "train.val_query=1", "episode.query=1", "train.episodes_per_step=1", "train.max_episodes=2"]
    assert main(["train", "--config", f"cub/{backbone}_teacher", *tiny]) == 0
    assert main(["distill", "--config", f"cub/{backbone}_cmkd", "--modality", "text",
                 "--name", "text_student", "--teacher", str(tmp_path / "runs" / f"cub_{backbone}_teacher"),
                 *tiny]) == 0
    meta = json.loads((tmp_path / "runs" / "text_student" / "best.json").read_text())
    assert [c["episodes"] for c in json.loads((tmp_path / "runs" / "text_student" / "plateau.json").read_text())
            ["curve"]] == [1, 2], "the CUB configs train to the plateau (capped here)"
    assert meta["spec"]["model"]["modality"] == "text" and meta["spec"]["model"]["backbone"] == backbone
    assert not (tmp_path / "runs" / f"cub_{backbone}_cmkd").exists()
