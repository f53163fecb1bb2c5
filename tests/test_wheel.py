"""A user's first hour from the wheel alone: installed outside the repository (no source tree on the path),
the shipped configs resolve by name, training writes metrics.jsonl as it goes, and README's Python
examples run as written."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from this tree, unpacked into its own folder (the dependencies come from this
    interpreter's environment, as `pip install cmkd` would bring them)."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(root / "dist"), str(REPO)], check=True, capture_output=True)
    wheel = next((root / "dist").glob("cmkd-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(root / "site"),
                    str(wheel)], check=True, capture_output=True)
    work = root / "work"  # the user's folder: no repository anywhere above it on the path
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(root / "site"), "CMKD_DATA": str(root / "data"),
           "CMKD_CACHE": str(root / "cache"), "PYTHONUNBUFFERED": "1"}
    return root, work, env


def _run(installed, *args, **kw):
    _, work, env = installed
    return subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True, **kw)


def test_the_installed_package_is_the_wheel(installed):
    root = installed[0]
    done = _run(installed, "-c", "import cmkd, cmkd.configs; print(cmkd.__file__)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(root / "site")), done.stdout


def test_config_show_by_name(installed):
    done = _run(installed, "-m", "cmkd", "config", "show", "glyphs_teacher")
    assert done.returncode == 0, done.stderr
    assert "name: glyphs_teacher" in done.stdout and "modality: image+text" in done.stdout


def test_train_by_config_name_writes_metrics_while_it_trains(installed):
    _, work, env = installed
    proc = subprocess.Popen([sys.executable, "-m", "cmkd", "train", "--config", "glyphs_teacher", "train.episodes=50",
                             "train.val_every=10", "train.val_episodes=20", "name=wheel_run"], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = work / "runs" / "wheel_run" / "metrics.jsonl"
    seen_running = False
    while proc.poll() is None:
        if metrics.exists() and metrics.read_text().count('"kind": "val"') >= 1:
            seen_running = proc.poll() is None
            break
        time.sleep(0.05)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    assert seen_running, "metrics.jsonl should hold a validation line before training ends"
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert sum(x["kind"] == "val" for x in lines) == 5
    assert (work / "runs" / "wheel_run" / "val_curve.png").exists()


def _readme_python_examples() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## From Python", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readme_python_examples_run_as_written(installed):
    examples = _readme_python_examples()
    assert len(examples) == 3
    for i, code in enumerate(examples):
        path = installed[1] / f"example_{i}.py"
        path.write_text(code)
        done = _run(installed, str(path), timeout=900)
        assert done.returncode == 0, f"README example {i + 1} failed:\n{done.stderr[-3000:]}"


def test_shipped_texts_point_only_at_files_the_wheel_holds(installed):
    """A path like benchmarks/RESULTS.md in a docstring, config or note of the package must be in the wheel, or be
    named as a file of the source repository."""
    site = installed[0] / "site"
    cited = re.compile(r"\b((?:benchmarks|docs|scripts|tools|tests)/[\w./-]+)")
    missing = []
    for f in (site / "cmkd").rglob("*"):
        if f.suffix not in (".py", ".md", ".yaml", ".json", ".txt"):
            continue
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            for path in cited.findall(line):
                if not (site / "cmkd" / path).exists() and "source repository" not in line:
                    missing.append(f"{f.relative_to(site)}:{n}: {path}")
    assert not missing, missing


def test_help_lists_the_api(installed):
    done = _run(installed, "-c", "import cmkd, pydoc; print(pydoc.render_doc(cmkd)); print(dir(cmkd))")
    assert done.returncode == 0, done.stderr
    for name in ("EpisodeBatchSampler", "OneShotClassifier", "register", "export", "load_model"):
        assert name in done.stdout
