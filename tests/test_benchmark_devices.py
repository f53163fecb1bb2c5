"""The grid and transfer benchmarks train on the device ``--device`` names, and refuse a bad one before any work."""
from __future__ import annotations

import pytest
import torch

from conftest import load_benchmark

convergence = load_benchmark("convergence")
transfer = load_benchmark("transfer")


class Stop(Exception):
    """Raised by a stand-in at the first training run, once the device it was given is recorded."""


def _picked(monkeypatch, module) -> list:
    """Make ``module.pick_device`` answer a device no default could give (``meta``), recording what it was asked."""
    asked: list = []

    def pick(name):
        asked.append(name)
        return torch.device("meta")

    monkeypatch.setattr(module, "pick_device", pick)
    monkeypatch.setattr(module, "configure_cpu", lambda *args: None)  # leave the test process's threads alone
    return asked


def test_the_grid_trains_on_the_device_it_is_given(monkeypatch, tmp_path):
    asked, seen = _picked(monkeypatch, convergence), []

    def grid(*args):
        seen.append(args[-1])
        raise Stop

    monkeypatch.setattr(convergence, "Grid", grid)
    monkeypatch.setattr("sys.argv", ["convergence.py", "run", "--cells", str(tmp_path), "--device", "cuda:1"])
    with pytest.raises(Stop):
        convergence.main()
    assert asked == ["cuda:1"] and seen == [torch.device("meta")], "the grid trains where --device says"


def test_transfer_trains_on_the_device_it_is_given(monkeypatch, tmp_path):
    asked, seen = _picked(monkeypatch, transfer), []

    def train(*args, device="cpu", **kwargs):
        seen.append(device)
        raise Stop

    monkeypatch.setattr(transfer, "load_dataset", lambda cfg: None)
    monkeypatch.setattr(transfer, "_train", train)
    monkeypatch.setattr("sys.argv", ["transfer.py", "--device", "cuda:1", "--out", str(tmp_path / "t.json")])
    with pytest.raises(Stop):
        transfer.main()
    assert asked == ["cuda:1"] and seen == [torch.device("meta")], "the teacher trains where --device says"


@pytest.mark.parametrize("script", ["convergence", "transfer"])
def test_a_bad_device_is_one_line_naming_the_fix_before_anything_is_written(script, monkeypatch, tmp_path):
    module = {"convergence": convergence, "transfer": transfer}[script]
    monkeypatch.setattr(module, "load_dataset", lambda cfg: pytest.fail("the dataset loaded"))
    argv = {"convergence": ["run", "--runs", str(tmp_path / "runs"), "--cells", str(tmp_path / "cells")],
            "transfer": ["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "t.json")]}[script]
    monkeypatch.setattr("sys.argv", [f"{script}.py", *argv, "--device", "tpu"])
    with pytest.raises(SystemExit) as stop:
        module.main()
    assert "error: --device 'tpu' is not a device; use cpu, cuda or cuda:N" in str(stop.value.code)
    assert not any(tmp_path.iterdir()), "nothing written"
