"""Image+text datasets as a table (CSV, JSON Lines) and the image folder with metadata.jsonl."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from cmkd.cli import main
from cmkd.data.cache import load_prepared, prepare
from cmkd.data.formats.folder import list_folder
from cmkd.data.formats.table import list_table
from cmkd.errors import DatasetError
from fixtures import make_folder


def _table_rows(root, fmt):
    """The folder fixture's images as table rows: path, label, captions, group, split."""
    make_folder(root / "images")
    splits = json.loads((root / "images" / "splits.json").read_text())
    groups = json.loads((root / "images" / "groups.json").read_text())
    split_of = {c: s for s, names in splits.items() for c in names}
    rows = []
    for img in sorted((root / "images").glob("*/*.png")):
        cls = img.parent.name
        own = img.with_suffix(".txt")
        caps = own.read_text().splitlines() if own.exists() else [f"a picture of {cls}"]
        rows.append({"path": str(img.relative_to(root)), "label": cls, "captions": caps, "group": groups[cls],
                     "split": split_of[cls]})
    if fmt == "jsonl":
        (root / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        return root / "data.jsonl"
    with open(root / "data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "caption", "caption_2", "group", "split"])
        for r in rows:
            caps = r["captions"] + [""]
            w.writerow([r["path"], r["label"], caps[0], caps[1], r["group"], r["split"]])
    return root / "data.csv"


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_table_lists_what_the_folder_format_lists(tmp_path, fmt):
    table = list_table(_table_rows(tmp_path, fmt))
    folder = list_folder(tmp_path / "images")
    assert table.classes == folder.classes and table.splits == folder.splits and table.groups == folder.groups
    by_path = {r.path.resolve(): r for r in folder.records}
    for r in table.records:
        twin = by_path[r.path.resolve()]
        assert (r.class_name, r.captions) == (twin.class_name, twin.captions)
    a = prepare(table, tmp_path / "t", 16, channels=1, workers=1, progress=False)[0]
    b = prepare(folder, tmp_path / "f", 16, channels=1, workers=1, progress=False)[0]
    ta, fb = load_prepared(a), load_prepared(b)
    assert np.array_equal(ta.images.numpy(), fb.images.numpy()) and ta.captions == fb.captions


def test_a_table_goes_through_the_cache_and_its_fingerprint(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CMKD_DATA", str(tmp_path / "data"))
    file = _table_rows(tmp_path, "csv")
    args = ["prepare", "table", "--file", str(file), "--size", "16", "--name", "tab", "--workers", "1"]
    assert main(args) == 0 and ": prepared;" in capsys.readouterr().out
    assert main(args) == 0 and "already up to date" in capsys.readouterr().out
    file.write_text(file.read_text().replace("a picture of class 03", "a drawing of class 03"))
    assert main(args) == 0 and ": prepared;" in capsys.readouterr().out
    assert main(["prepare", "table", "--root", str(tmp_path), "--name", "x"]) == 2
    assert "--file" in capsys.readouterr().err


def test_an_image_folder_with_metadata_jsonl(tmp_path):
    make_folder(tmp_path, splits=False, groups=False)
    rows = [{"file_name": str(p.relative_to(tmp_path)), "text": f"hand-written caption {i}"}
            for i, p in enumerate(sorted(tmp_path.glob("*/*.png")))]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    listing = list_table(tmp_path / "metadata.jsonl", label_from_folder=True)
    assert listing.classes == sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert listing.records[5].captions == ("hand-written caption 5",)
    assert sum(len(v) for v in listing.splits.values()) == 12
    assert main(["prepare", "folder", "--root", str(tmp_path), "--out", str(tmp_path.parent / "meta_out"),
                 "--size", "16", "--workers", "1"]) == 0
    assert load_prepared(tmp_path.parent / "meta_out").captions[5] == ("hand-written caption 5",)


@pytest.mark.parametrize("content, match", [
    ("path,label\nimages/class 00/img0.png,\n", r"data.csv:2: no class label"),
    ("label,caption\na,b\n", r"data.csv:2: no image path"),
    ("path,label\nimages/nope.png,a\n", r"data.csv:2: image .*nope.png does not exist"),
    ("path,label,split\nimages/class 00/img0.png,a,test\n", r"split 'test'; use one of base, val, novel"),
    ("path,label\nimages/class 00/img0.png,a\nimages/class 00/img0.png,a\n", "listed again \\(first on line 2\\)"),
    ("path,label\nimages/class 00/img0.png,a,extra\n", "more cells than the header"),
    ("path,label,group\nimages/class 00/img0.png,a,g1\nimages/class 00/img1.png,a,g2\n", "a class has one group"),
    ("path\n", "has no rows"),
])
def test_bad_rows_name_the_line_and_the_fix(tmp_path, content, match):
    make_folder(tmp_path / "images")
    (tmp_path / "data.csv").write_text(content)
    with pytest.raises(DatasetError, match=match):
        list_table(tmp_path / "data.csv")


def test_bad_json_lines_name_the_line(tmp_path):
    make_folder(tmp_path / "images")
    (tmp_path / "d.jsonl").write_text('{"path": "images/class 00/img0.png", "label": "a"}\n{oops\n')
    with pytest.raises(DatasetError, match=r"d.jsonl:2: not valid JSON"):
        list_table(tmp_path / "d.jsonl")
    (tmp_path / "d.jsonl").write_text('{"path": "images/class 00/img0.png", "label": "a", "caption": 3}\n')
    with pytest.raises(DatasetError, match=r"d.jsonl:1: column 'caption' holds int"):
        list_table(tmp_path / "d.jsonl")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DatasetError, match="use .csv"):
        list_table(tmp_path / "d.txt")
