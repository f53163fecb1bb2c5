"""`cmkd predict`: a trained glyph student classifies held-out glyphs from one example per class."""

import json

import numpy as np
import pytest
from PIL import Image

from cmkd.cli import main
from cmkd.predict import OneShotClassifier
from cmkd.train.loop import Trainer


@pytest.fixture(scope="module")
def runs(small, tmp_path_factory):
    from cmkd.config import load_config

    out = tmp_path_factory.mktemp("runs")
    made = {}
    for name, modality in (("student", "image"), ("teacher", "image+text")):
        cfg = load_config(base={"out": str(out), "name": name, "model.modality": modality, "train.episodes": 60,
                                "train.val_every": 60, "train.val_episodes": 20, "episode.query": 5})
        Trainer(cfg, small).fit(progress=False)
        made[name] = out / name
    return made


@pytest.fixture(scope="module")
def folders(small, tmp_path_factory):
    """Support: 1 image of 5 novel classes; queries: 4 more each, in class-named folders."""
    root = tmp_path_factory.mktemp("predict")
    labels = small.labels.numpy()
    classes = small.split_classes("novel")[:5]
    for c in classes:
        name = small.class_names[c].replace(" ", "_").replace("+", "")
        idx = np.flatnonzero(labels == c)
        for part, chosen in (("support", idx[:1]), ("query", idx[1:5])):
            (root / part / name).mkdir(parents=True)
            for i in chosen:
                path = root / part / name / f"{i}.png"
                Image.fromarray(small.images[i, 0].numpy()).save(path)
                path.with_suffix(".txt").write_text(small.captions[i][0] + "\n")
    return root


def test_predict_classifies_held_out_glyphs(runs, folders, capsys):
    assert main(["predict", "--model", str(runs["student"]), "--support", str(folders / "support"),
                 "--query", str(folders / "query"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["labelled_queries"] == 20 and len(out["classes"]) == 5
    assert out["accuracy"] >= 0.6, f"one-shot accuracy {out['accuracy']} should be far above chance (0.2)"
    probs = out["predictions"][0]["probabilities"]
    assert abs(sum(probs.values()) - 1) < 1e-3
    assert main(["predict", "--model", str(runs["student"]), "--support", str(folders / "support"),
                 "--query", str(folders / "query")]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_python_api_matches_the_cli(runs, folders):
    clf = OneShotClassifier.load(runs["student"])
    support = sorted((folders / "support").glob("*/*.png"))
    clf.fit(support, [p.parent.name for p in support])
    queries = sorted((folders / "query").glob("*/*.png"))
    pred = clf.predict(queries)
    acc = np.mean([p == q.parent.name for p, q in zip(pred, queries)])
    assert acc >= 0.6
    with pytest.raises(ValueError, match="at least 2"):
        clf.fit(support[:1], ["a"])


def test_teacher_needs_captions(runs, folders, capsys, tmp_path):
    assert main(["predict", "--model", str(runs["teacher"]), "--support", str(folders / "support"),
                 "--query", str(folders / "query"), "--json"]) == 0  # captions lie beside every image
    assert json.loads(capsys.readouterr().out)["accuracy"] > 0.6
    query = tmp_path / "q.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(query)  # no q.txt
    assert main(["predict", "--model", str(runs["teacher"]), "--support", str(folders / "support"),
                 "--query", str(query)]) == 2
    err = capsys.readouterr().err
    assert "needs a caption for every image" in err and "q.png" in err
    clf = OneShotClassifier.load(runs["teacher"])
    with pytest.raises(ValueError, match="needs a caption for every image"):
        clf.fit(sorted((folders / "support").glob("*/*.png")), list("abcde"))


def _support_with(tmp_path, layout):
    root = tmp_path / "s"
    for rel, content in layout.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if content == "png":
            Image.fromarray(np.zeros((32, 32), np.uint8)).save(p)
        elif content == "dir":
            p.mkdir()
        else:
            p.write_bytes(content)
    return root


@pytest.mark.parametrize("layout,expect", [
    ({"a/1.png": "png"}, "needs at least 2"),
    ({"a/1.png": "png", "b": "dir"}, "has no images"),
    ({"a/1.png": "png", "A/1.png": "png"}, "differ only in case"),
    ({"a/1.png": "png", "b/notes.md": b"# hello"}, "notes.md is not an image"),
    ({"a/1.png": "png", "b/empty.png": b""}, "empty.png is empty"),
])
def test_bad_support_folders_are_explained(runs, tmp_path, capsys, layout, expect):
    root = _support_with(tmp_path, layout)
    assert main(["predict", "--model", str(runs["student"]), "--support", str(root),
                 "--query", str(root / "a" / "1.png")]) == 2
    assert expect in capsys.readouterr().err


def test_missing_support_folder(runs, tmp_path, capsys):
    assert main(["predict", "--model", str(runs["student"]), "--support", str(tmp_path / "none"),
                 "--query", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
