"""CUB-200-2011 + Reed captions, Oxford-102 and the image-folder format, on generated fixtures."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from cmkd.cli import main
from cmkd.data.cache import load_prepared, prepare
from cmkd.data.formats.cub import bird_type, closerlook_split, list_cub
from cmkd.data.formats.flowers import list_flowers
from cmkd.data.formats.folder import list_folder
from cmkd.errors import ImageError
from fixtures import CUB_CLASSES, corrupt, make_cub, make_flowers, make_folder


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    root = tmp_path_factory.mktemp("cub")
    planted = make_cub(root)
    return root, planted


def test_closerlook_rule_gives_100_50_50_with_the_documented_indices():
    split = closerlook_split(list(reversed(CUB_CLASSES)))  # the rule sorts the folders itself
    assert [len(split[k]) for k in ("base", "val", "novel")] == [100, 50, 50]
    ordered = sorted(CUB_CLASSES)
    assert split["base"][:2] == [ordered[0], ordered[2]]
    assert split["val"][:2] == [ordered[1], ordered[5]]
    assert split["novel"][:2] == [ordered[3], ordered[7]]
    assert set(split["base"]) | set(split["val"]) | set(split["novel"]) == set(CUB_CLASSES)


def test_bird_type_groups():
    assert bird_type("026.Bronzed_Cowbird") == "Cowbird"
    groups = {bird_type(c) for c in CUB_CLASSES}
    assert {"Warbler", "Sparrow", "Gull", "Tern", "Wren"} <= groups


def test_cub_orphan_id_is_named(cub):
    root, planted = cub
    with pytest.raises(ValueError, match=f"image id {planted['orphan_id']} .*not in image_class_labels.txt"):
        list_cub(root, root / "text_c10")


def test_cub_listing_cleans_captions_and_reports_missing_ones(cub):
    root, planted = cub
    listing = list_cub(root, root / "text_c10", skip_bad=True)
    assert len(listing.classes) == 200 and len(listing.records) == 600
    first = next(r for r in listing.records if r.path == planted["first_image"])
    assert len(first.captions) == 10  # the blank line is gone
    assert "it has a sm all beak" in first.captions and all("\ufffd" not in c for c in first.captions)
    assert any(planted["uncaptioned"] in w for w in listing.warnings)
    assert any(planted["orphan_id"] in w for w in listing.warnings)
    assert listing.groups["026.Bronzed_Cowbird"] == "Cowbird"


def test_cub_prepare_crop_idempotence_and_change_detection(cub, tmp_path):
    root, _ = cub
    listing = list_cub(root, root / "text_c10", crop=True, skip_bad=True)
    out, built = prepare(listing, tmp_path / "c", 16, workers=2, progress=False)
    assert built
    ds = load_prepared(out)
    assert ds.images.shape == (600, 3, 16, 16) and ds.splits["base"] and len(ds.splits["novel"]) == 50
    red = ds.images[0].float().mean((1, 2))
    assert red[0] > 200 and red[1] < 60, "the bounding-box crop keeps only the red box"
    assert prepare(list_cub(root, root / "text_c10", crop=True, skip_bad=True), out, 16, progress=False)[1] is False
    target = listing.records[3].path
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    assert prepare(list_cub(root, root / "text_c10", crop=True, skip_bad=True), out, 16, progress=False)[1] is False, \
        "a touched file with the same content is still up to date"
    with Image.open(target) as img:
        changed = np.asarray(img.convert("RGB")).copy()
    changed[:4, :4] = 0
    Image.fromarray(changed).save(target, "JPEG")
    assert prepare(list_cub(root, root / "text_c10", crop=True, skip_bad=True), out, 16, progress=False)[1] is True


@pytest.mark.parametrize("how,expect", [("truncated", "truncated or corrupt"), ("zero", "is empty")])
def test_bad_jpeg_stops_prepare_or_is_skipped(tmp_path, how, expect):
    planted = make_cub(tmp_path, per_class=2)
    bad = planted["first_image"]
    corrupt(bad, how)
    listing = list_cub(tmp_path, tmp_path / "text_c10", skip_bad=True)
    with pytest.raises(ImageError, match=expect) as err:
        prepare(listing, tmp_path / "out", 16, workers=2, progress=False)
    assert bad.name in str(err.value) and "--skip-bad" in str(err.value)
    out, _ = prepare(listing, tmp_path / "out", 16, workers=2, skip_bad=True, progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["images"] == 399 and len(meta["skipped_bad"]) == 1 and bad.name in meta["skipped_bad"][0]


def test_folder_format_honours_splits_groups_and_class_captions(tmp_path):
    make_folder(tmp_path)
    listing = list_folder(tmp_path)
    assert listing.splits["novel"] == ["class 09", "class 10", "class 11"]
    assert listing.groups["class 04"] == "g1"
    own = next(r for r in listing.records if r.path.name == "img0.png")
    other = next(r for r in listing.records if r.path.name == "img2.png" and r.class_name == own.class_name)
    assert own.captions == (f"own caption of {own.class_name}", "second line")
    assert other.captions == (f"a picture of {own.class_name}",)


def test_folder_format_seeded_split_keeps_groups_together(tmp_path):
    make_folder(tmp_path, classes=30, splits=False)
    a, b = list_folder(tmp_path, seed=3), list_folder(tmp_path, seed=3)
    assert a.splits == b.splits
    owner = {}
    for split, names in a.splits.items():
        for n in names:
            assert owner.setdefault(a.groups[n], split) == split


def test_folder_format_errors(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        list_folder(tmp_path / "none")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ImageError, match="has no images"):
        list_folder(tmp_path)
    make_folder(tmp_path / "ok", splits=False, groups=False)
    (tmp_path / "ok" / "splits.json").write_text('{"base": ["nope"]}')
    with pytest.raises(ValueError, match="names classes that have no images"):
        list_folder(tmp_path / "ok").check()


def test_flowers_listing(tmp_path):
    make_flowers(tmp_path)
    listing = list_flowers(tmp_path, tmp_path / "text_c10")
    assert len(listing.classes) == 12 and len(listing.records) == 36
    assert listing.records[0].captions == ("a flower of kind 1", "with petals")
    assert sum(len(v) for v in listing.splits.values()) == 12
    assert listing.options["image_level_setid"]["tstid"] == 2


FAST = ["train.episodes=6", "train.val_every=6", "train.val_episodes=4", "train.val_query=1", "episode.query=1",
        "data.image_size=16"]


@pytest.mark.parametrize("fmt", ["cub", "flowers", "folder"])
def test_both_directions_from_the_cli(fmt, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CMKD_DATA", str(tmp_path / "data"))
    src = tmp_path / "src"
    if fmt == "cub":
        make_cub(src, per_class=3, missing_caption=False)
        args = ["--root", str(src), "--captions", str(src / "text_c10"), "--skip-bad"]
    elif fmt == "flowers":
        make_flowers(src, classes=30, per_class=3)
        args = ["--root", str(src), "--captions", str(src / "text_c10")]
    else:
        make_folder(src, classes=24, per_class=3)
        args = ["--root", str(src)]
    assert main(["prepare", fmt, *args, "--size", "16", "--name", fmt, "--workers", "2"]) == 0
    assert "prepared" in capsys.readouterr().out
    assert main(["prepare", fmt, *args, "--size", "16", "--name", fmt, "--workers", "2"]) == 0
    assert "already up to date" in capsys.readouterr().out
    assert main(["datasets"]) == 0
    assert f"{fmt}:" in capsys.readouterr().out
    out = f"out={tmp_path / 'runs'}"
    data = f"data.dataset={fmt}"
    assert main(["train", "--modality", "image+text", "--name", "t", out, data, *FAST]) == 0
    for modality in ("image", "text"):
        assert main(["distill", "--teacher", str(tmp_path / "runs" / "t"), "--modality", modality,
                     "--name", modality, out, data, *FAST]) == 0
    assert main(["evaluate", f"image={tmp_path / 'runs' / 'image'}", f"text={tmp_path / 'runs' / 'text'}",
                 "--shots", "1", "--query", "1", "--episodes", "5", "--out", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["dataset"] == fmt and set(result["settings"][0]["methods"]) == {"image", "text"}
    assert np.isfinite(result["settings"][0]["methods"]["text"]["mean"])


def test_text_modality_names_an_image_without_caption(cub, tmp_path, capsys):
    root, planted = cub
    out, _ = prepare(list_cub(root, root / "text_c10", skip_bad=True), tmp_path / "c", 16, progress=False)
    assert main(["train", "--modality", "text", f"out={tmp_path}", f"data.dataset={out}", *FAST]) == 2
    err = capsys.readouterr().err
    assert planted["uncaptioned"].split("/")[1] in err and "has no caption" in err
