"""The LSL collapse trace (``benchmarks/lsl_collapse.py``) sees what it reports: a large caption weight makes
RelationNet's encoder map every image alike within a few steps, and its relation loss stop reaching the encoder."""
from __future__ import annotations

from conftest import load_benchmark

lsl_collapse = load_benchmark("lsl_collapse")


def test_a_large_caption_weight_collapses_the_encoder_and_no_caption_loss_does_not(monkeypatch, tmp_path):
    monkeypatch.setattr(lsl_collapse, "STEPS", (0, 10))
    data = lsl_collapse.load_dataset(lsl_collapse.load_config("glyphs_student", ["data.low_res=8"]).data)
    large, none = (lsl_collapse.trace(w, 11, tmp_path, val_episodes=2, data=data)["steps"] for w in (5.0, 0.0))
    assert large["0"] == none["0"] | {"grad_lsl": large["0"]["grad_lsl"]}, "same start: only the caption term differs"
    assert large["0"]["grad_lsl"] > 5 * large["0"]["grad_mse"] and none["0"]["grad_lsl"] == 0.0
    assert large["10"]["between_share"] < large["0"]["between_share"] / 4 < none["10"]["between_share"]
    assert large["10"]["grad_mse"] < none["10"]["grad_mse"] / 4
