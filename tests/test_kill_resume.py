"""A run killed with SIGKILL resumes and ends exactly like an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

ARGS = ["train.episodes=60", "train.val_every=5", "train.val_episodes=5", "train.val_query=2", "episode.query=3",
        "train.threads=1", "train.fine_grained_share=0.5"]


def _cmd(out, name, *extra):
    return [sys.executable, "-m", "cmkd.cli", "train", f"out={out}", f"name={name}", *ARGS, *extra]


def _final_weights(run_dir):
    meta = json.loads((run_dir / "last.json").read_text())
    return meta, load_file(str(run_dir / meta["weights_file"]))


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL is POSIX")
def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(_cmd(tmp_path, "straight"), check=True, env=env, capture_output=True)

    proc = subprocess.Popen(_cmd(tmp_path, "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "last.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if json.loads(last.read_text())["step"] >= 20:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step_at_kill = json.loads(last.read_text())["step"]
    assert 20 <= step_at_kill < 60, "the kill must land mid-run"

    done = subprocess.run(_cmd(tmp_path, "killed", "--resume"), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed {tmp_path / 'killed'} at step" in done.stderr + done.stdout
    meta_a, a = _final_weights(tmp_path / "straight")
    meta_b, b = _final_weights(tmp_path / "killed")
    assert meta_a["step"] == meta_b["step"] == 60
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k
    assert [h["val_acc"] for h in meta_a["history"]] == [h["val_acc"] for h in meta_b["history"]]
