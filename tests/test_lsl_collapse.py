"""The LSL collapse trace (``benchmarks/lsl_collapse.py``) sees what it reports: a large caption weight makes
RelationNet's encoder map every image alike within a few steps, and its relation loss stop reaching the encoder;
the script traces each seed at each weight its options name."""
from __future__ import annotations

import json

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


def test_the_script_traces_every_seed_at_every_weight_and_records_both(monkeypatch, tmp_path, capsys):
    calls = []

    def fake_trace(weight, episodes, out, data=None, seed=0):
        calls.append((seed, weight, episodes, out))
        return {"weight": weight, "seed": seed, "episodes": episodes, "val_acc": 0.5,
                "steps": {"0": {"grad_mse": 1.0, "grad_lsl": weight, "between_share": 0.5}}}

    monkeypatch.setattr(lsl_collapse, "trace", fake_trace)
    monkeypatch.setattr(lsl_collapse, "load_dataset", lambda cfg: None)
    monkeypatch.setattr(lsl_collapse, "configure_cpu", lambda threads: threads)
    out = tmp_path / "trace.json"
    monkeypatch.setattr("sys.argv", ["lsl_collapse.py", "--weights", "5", "0", "--seeds", "3", "4", "--episodes",
                                     "7", "--runs", str(tmp_path / "runs"), "--out", str(out)])
    lsl_collapse.main()
    assert calls == [(s, w, 7, tmp_path / "runs") for s in (3, 4) for w in (5.0, 0.0)]
    written = json.loads(out.read_text())["results"]
    assert [(r["seed"], r["weight"]) for r in written] == [(3, 5.0), (3, 0.0), (4, 5.0), (4, 0.0)]
    table = capsys.readouterr().out.splitlines()
    assert table[2:] == [f"| {s} | {w} | 0 | 1.0000 | {float(w):.4f} | 0.500 | 50.00 |" for s in (3, 4) for w in (5, 0)]
