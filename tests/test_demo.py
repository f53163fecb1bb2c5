"""The demo pipeline end to end, in its quick mode (a smoke test of every stage)."""

import json

import pytest
import torch

from cmkd import demo
from cmkd.cli import main


def test_quick_demo_writes_report_plots_and_results(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "image student + SRL" in printed and "text student + SRL" in printed and "paired" in printed
    result = json.loads((out / "results.json").read_text())
    names = set(result["settings"][0]["methods"])
    assert names == {"teacher (image+text)", "image student", "image student + KD", "image student + SRL",
                     "text student", "text student + KD", "text student + SRL"}
    assert result["runs"]["text student + SRL"]["config"]["model"]["modality"] == "text"
    assert result["runs"]["image student + KD"]["config"]["distill"]["method"] == "kd"
    labels = [s["label"] for s in result["settings"]]
    assert labels == ["5-way 1-shot", "5-way 5-shot", "5-way 1-shot fine-grained", "5-way 5-shot fine-grained"]
    for s in result["settings"]:
        lengths = {len(run) for runs in s["per_episode"].values() for run in runs}
        assert lengths == {result["episodes"]}, "every method scored on the same episodes"
        assert {"image student + SRL - image student", "text student + SRL - text student",
                "teacher (image+text) - text student"} <= set(s["paired"])
    report = (out / "report.md").read_text()
    assert "Quick mode" in report and "val_curves.png" in report and "relations.png" in report
    for png in ("val_curves.png", "relations.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_trains_on_the_device_it_is_given(tmp_path, monkeypatch):
    seen = []

    class Stop(Exception):
        pass

    def trainer(cfg, dataset, device="cpu", **kwargs):
        seen.append(torch.device(device))
        raise Stop

    monkeypatch.setattr(demo, "Trainer", trainer)
    with pytest.raises(Stop):
        demo.run_demo(tmp_path / "demo", quick=True, device="meta")
    assert seen == [torch.device("meta")], "the demo's runs train where the user asked, not on a fixed CPU"


def test_demo_device_flag_is_checked(tmp_path, capsys):
    assert main(["demo", "--quick", "--device", "tpu", "--out", str(tmp_path / "demo")]) == 2
    assert "--device 'tpu' is not a device; use cpu, cuda or cuda:N" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()
