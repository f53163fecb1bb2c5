"""``cmkd probe``: what the text adds, and how much of it the image carries."""

import json

import numpy as np
import pytest
import torch

from cmkd.cli import main
from cmkd.config import load_config
from cmkd.data.device import DeviceData
from cmkd.data.episodes import EpisodeSetting
from cmkd.eval.probe import RIDGE_GRID, LinearMap, fit_image_to_text, probe, r_squared, table, verdict
from cmkd.models.fewshot import build_model

FAST = ["train.episodes=10", "train.val_every=10", "train.val_episodes=10", "train.val_query=3", "episode.query=3"]


def test_linear_map_recovers_an_affine_map_and_r_squared_scores_it():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g)
    a, b = torch.randn(6, 4, generator=g), torch.randn(4, generator=g)
    y = x @ a + b
    fitted = LinearMap(x, y, strength=1e-12)
    torch.testing.assert_close(fitted.weight.float(), a, atol=1e-5, rtol=0)
    torch.testing.assert_close(fitted(x), y, atol=1e-5, rtol=0)
    assert r_squared(y, y) == pytest.approx(1.0)
    assert r_squared(y.mean(0).expand_as(y), y) == pytest.approx(0.0, abs=1e-12)
    assert r_squared(-y, y) < 0


def test_the_ridge_strength_is_chosen_on_held_out_classes():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 8, generator=g)
    labels = np.repeat(np.arange(20), 20)
    exact = x @ torch.randn(8, 3, generator=g)
    assert fit_image_to_text(x, exact, labels)[1] == RIDGE_GRID[0]  # a true map: the weakest ridge
    noise = torch.randn(400, 3, generator=g)
    assert fit_image_to_text(x, noise, labels)[1] >= RIDGE_GRID[-2]  # nothing to predict: the strong ones


def test_one_model_in_every_role_adds_nothing_and_carries_everything(small):
    torch.manual_seed(0)
    model = build_model(load_config(base={"model.modality": "image"}).model, small).eval()
    data = DeviceData(small)
    settings = [EpisodeSetting(5, 1, 5), EpisodeSetting(5, 1, 5, fine_grained=True)]
    result = probe({"image": model, "text": model, "image+text": model}, data, settings, episodes=40)
    for s in result["settings"]:
        assert s["text_adds"] == {"mean": 0.0, "ci95": 0.0}
        assert s["accuracy"]["text from image"]["mean"] == pytest.approx(s["accuracy"]["text"]["mean"], abs=0.02)
        assert s["image_carries"] == pytest.approx(1.0, abs=0.1) and s["r_squared"] > 0.99
        assert "the text adds nothing measurable (+0.00 ± 0.00 points)" in verdict(s)
    at_chance = {**result["settings"][0], "image_carries": None}
    assert "no text knowledge to carry" in verdict(at_chance)
    assert "| – |" in table({**result, "settings": [at_chance]})
    with pytest.raises(ValueError, match="missing: text"):
        probe({"image": model, "image+text": model}, data, settings)


def test_probe_trains_the_three_parts_and_scores_them_like_evaluate(tmp_path, capsys):
    out = tmp_path / "probe.json"
    assert main(["probe", "--name", "p", f"out={tmp_path}", *FAST, "--episodes", "30", "--fine-grained",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| setting | image | text | image+text | text from image |" in printed
    assert "5-way 1-shot fine-grained: the text" in printed
    for part, folder in (("image", "image"), ("text", "text"), ("image+text", "image_text")):
        meta = json.loads((tmp_path / "p" / folder / "best.json").read_text())
        assert meta["spec"]["model"]["modality"] == part
    result = json.loads(out.read_text())
    assert result["split"] == "val" and result["train_episodes"] == 10
    assert [s["label"] for s in result["settings"]] == ["5-way 1-shot", "5-way 1-shot fine-grained"]
    evaluated = tmp_path / "eval.json"
    assert main(["evaluate", str(tmp_path / "p" / "image"), str(tmp_path / "p" / "image_text"), "--split", "val",
                 "--seed", "7", "--episodes", "30", "--shots", "1", "--query", "3", "--fine-grained",
                 "--out", str(evaluated)]) == 0
    reference = json.loads(evaluated.read_text())["settings"]
    for mine, theirs in zip(result["settings"], reference):
        assert mine["accuracy"]["image"]["mean"] == pytest.approx(theirs["methods"]["image"]["mean"], abs=1e-6)
        assert mine["text_adds"]["mean"] == pytest.approx(theirs["paired"]["image_text - image"]["mean"], abs=1e-6)
    assert main(["probe", "--name", "p", f"out={tmp_path}", *FAST]) == 2  # runs exist: resume or overwrite
    assert "--resume" in capsys.readouterr().err
