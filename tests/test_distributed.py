"""Multi-process training and evaluation with torchrun, on CPUs with the gloo backend."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cmkd import distributed
from cmkd.cli import main
from cmkd.config import load_config
from cmkd.distributed import Ranks, shard
from cmkd.runtime import configure_cpu
from cmkd.train.loop import Trainer
from conftest import subset
from ddp_worker import WORKER_CONFIG, WORKER_SUBSET

HERE = Path(__file__).parent


def torchrun(*args: str, procs: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *args]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.parametrize("count", [0, 1, 2, 7, 600])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_cover_every_item_once_in_order(count, world):
    parts = [list(range(count))[shard(count, Ranks(r, world))] for r in range(world)]
    assert sum(parts, []) == list(range(count))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_each_rank_takes_its_slot_of_the_single_process_stream(small, fast_cfg):
    cfg = fast_cfg(**{"train.episodes_per_step": 2, "train.fine_grained_share": 0.5})
    single = Trainer(cfg, small)
    ranks = []
    for r in range(2):
        t = Trainer(cfg, small)
        t.ranks = t.schedule.ranks = Ranks(r, 2)
        ranks.append(t)
    for step in range(3):
        for r, t in enumerate(ranks):
            assert np.array_equal(t.schedule.indices(step), single.schedule.indices(2 * step + r))
    assert not np.array_equal(ranks[0].schedule.indices(0), ranks[1].schedule.indices(0))


def test_two_rank_training_keeps_ranks_in_sync(tmp_path, glyphs):
    torchrun(str(HERE / "ddp_worker.py"), str(tmp_path))
    reports = [json.loads((tmp_path / f"ddp_rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world"] == 2 and r["steps"] == 4 for r in reports), "16 episodes / (2 per step x 2 ranks)"
    assert reports[0]["digest"] == reports[1]["digest"], "DDP keeps every rank's weights identical"
    assert reports[0]["val"] == reports[1]["val"] and len(reports[0]["val"]) == 2
    cfg = load_config(base={**WORKER_CONFIG, "out": str(tmp_path)})
    single = Trainer(cfg, subset(glyphs, WORKER_SUBSET, per_class=24))
    for r, report in enumerate(reports):
        assert np.array_equal(report["episodes_step0"], single.schedule.indices(r)), "rank r draws slot r"
    meta = json.loads((tmp_path / "ddp" / "last.json").read_text())
    assert meta["world_size"] == 2 and meta["step"] == 4
    assert [h["episodes"] for h in meta["history"]] == [8, 16]
    with pytest.raises(ValueError, match="trained by 2 process"):
        single.state.resume()


def test_distillation_under_torchrun_keeps_ranks_in_sync_and_resumes_exactly(tmp_path, glyphs):
    """Two gloo processes distil from one teacher: both end with the same weights; a run whose last checkpoint
    is one validation behind (as after a kill between checkpoints) resumes under torchrun to the same weights."""
    teacher_cfg = load_config(base={**WORKER_CONFIG, "out": str(tmp_path), "name": "teacher",
                                    "model.modality": "image+text", "train.pretrain_epochs": 0, "train.episodes": 8})
    Trainer(teacher_cfg, subset(glyphs, WORKER_SUBSET, per_class=24)).fit(progress=False)
    torchrun(str(HERE / "ddp_worker.py"), str(tmp_path), "distill", "dist")
    reports = [json.loads((tmp_path / f"dist_rank{r}.json").read_text()) for r in range(2)]
    assert reports[0]["digest"] == reports[1]["digest"], "DDP keeps every rank's student identical"
    meta = json.loads((tmp_path / "dist" / "last.json").read_text())
    assert meta["teacher_sha256"] and meta["world_size"] == 2 and "srl_rel" in meta["history"][-1]
    shutil.copytree(tmp_path / "dist", tmp_path / "cut")
    os.replace(tmp_path / "cut" / "last.prev.json", tmp_path / "cut" / "last.json")  # one validation behind
    torchrun(str(HERE / "ddp_worker.py"), str(tmp_path), "distill", "cut", "resume")
    resumed = [json.loads((tmp_path / f"cut_rank{r}.json").read_text()) for r in range(2)]
    assert resumed[0]["digest"] == resumed[1]["digest"] == reports[0]["digest"]
    assert resumed[0]["val"] == reports[0]["val"]


def test_sharded_evaluation_equals_single_process_per_episode(tmp_path, small, fast_cfg):
    trainer = Trainer(fast_cfg(**{"train.episodes": 10, "train.val_every": 10, "train.val_episodes": 5}), small)
    trainer.fit(progress=False)
    args = ["-m", "cmkd.cli", "evaluate", f"student={trainer.run_dir}", "--episodes", "41", "--shots", "1", "5",
            "--fine-grained", "--device", "cpu"]
    subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one.json")], check=True,
                   capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    torchrun(*args, "--out", str(tmp_path / "two.json"))
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert two["processes"] == 2 and one["processes"] == 1
    assert len(one["settings"]) == 4
    for a, b in zip(one["settings"], two["settings"]):
        assert len(b["per_episode"]["student"]) == 1 and len(b["per_episode"]["student"][0]) == 41
        assert a["per_episode"] == b["per_episode"], a["label"]


def test_local_processes_share_the_cores(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    try:
        assert configure_cpu() == 4 and torch.get_num_threads() == 4
        assert configure_cpu(3) == 3, "an explicit train.threads wins"
    finally:
        torch.set_num_threads(before)


class _FakeGroup:
    """Stands in for an initialised two-rank process group and records what is called on it."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[str] = []
        for name, fn in {"is_available": lambda: True, "is_initialized": lambda: "destroy" not in self.calls,
                         "get_rank": lambda: 0, "get_world_size": lambda: 2,
                         "barrier": lambda: self.calls.append("barrier"),
                         "destroy_process_group": lambda: self.calls.append("destroy")}.items():
            monkeypatch.setattr(distributed.dist, name, fn)


def test_teardown_waits_for_the_peers_only_after_a_clean_run(monkeypatch):
    group = _FakeGroup(monkeypatch)
    distributed.teardown()
    assert group.calls == ["barrier", "destroy"], "a clean exit leaves the group together"
    group.calls.clear()
    distributed.teardown(clean=False)
    assert group.calls == ["destroy"], "after an error no rank waits for peers that may never come"


def test_the_cli_leaves_the_group_cleanly_only_when_the_command_succeeded(monkeypatch, capsys):
    seen: list[bool] = []
    monkeypatch.setattr(distributed, "teardown", lambda clean=True: seen.append(clean))
    assert main(["config", "list"]) == 0
    assert main(["config", "show", "glyphs_student", "train.episodez=3"]) == 2
    assert seen == [True, False]
    assert "train.episodez" in capsys.readouterr().err
