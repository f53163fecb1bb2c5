"""The glyph builder's filters, on fonts that ship with matplotlib (no Debian fonts needed)."""

from pathlib import Path

import matplotlib
import numpy as np
import pytest

fontTools = pytest.importorskip("fontTools", reason="the dev extra brings fontTools")
import glyph_builder as gb  # noqa: E402  (tools/ is on the path: conftest.py)
from cmkd.data.splits import split_by_group  # noqa: E402

FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
LATIN = gb.letters_of_blocks([gb.BLOCKS["Basic Latin"], gb.BLOCKS["Latin-1 Supplement"],
                              gb.BLOCKS["Latin Extended-A"], gb.BLOCKS["Cyrillic"]])


def test_letters_are_category_L_of_the_blocks():
    letters = gb.letters_of_blocks()
    assert ord("a") in letters and 0x1EA5 in letters and 0x0436 in letters  # a, ấ, ж
    assert ord("1") not in letters and ord("!") not in letters and 0x00D7 not in letters  # digit, punct, ×
    assert len(letters) > 1200


def test_group_is_the_part_before_with():
    assert gb.letter_group("LATIN SMALL LETTER E WITH CIRCUMFLEX AND ACUTE") == "LATIN SMALL LETTER E"
    assert gb.letter_group("CYRILLIC SMALL LETTER ZHE") == "CYRILLIC SMALL LETTER ZHE"


def test_placeholder_font_is_rejected():
    face, cmap = gb.read_face(FONTS / "LastResortHE-Regular.ttf")
    assert len(gb.covered_letters(cmap, LATIN)) > 300  # its cmap 'covers' everything ...
    assert gb.is_placeholder(cmap, LATIN)  # ... with a handful of shared glyphs
    kept, rejected = gb.select_faces([FONTS / "LastResortHE-Regular.ttf"], LATIN)
    assert not kept and "placeholder" in rejected[0]["reason"]


def test_real_font_is_kept():
    face, cmap = gb.read_face(FONTS / "DejaVuSans.ttf")
    assert not gb.is_placeholder(cmap, LATIN)
    assert gb.misencoded_letters(cmap, LATIN) == []
    kept, _ = gb.select_faces([FONTS / "DejaVuSans.ttf"], LATIN)
    assert [f.family for f, _ in kept] == ["DejaVu Sans"]


@pytest.mark.parametrize("name", ["cmr10.ttf", "cmex10.ttf", "cmmi10.ttf"])
def test_tex_encoded_fonts_are_rejected(name):
    _, cmap = gb.read_face(FONTS / name)
    assert gb.misencoded_letters(cmap, LATIN), f"{name} puts other glyphs on Latin code points"
    kept, rejected = gb.select_faces([FONTS / name], LATIN)
    assert not kept
    assert any(k in rejected[0]["reason"] for k in ("re-encoded", "covers only"))


def test_symbol_shapes_fail_the_probe_check():
    refs = gb.reference_probes()
    good = gb.render_face(str(FONTS / "DejaVuSerif-Italic.ttf"), [ord(c) for c in gb.PROBES], (32,))
    assert gb.probe_accuracy({k: v[0] for k, v in good.items()}, refs) > 0.9
    # cmsy10 maps A-Z to calligraphic capitals and lower case to symbols: not the letters
    sym = gb.render_face(str(FONTS / "cmsy10.ttf"), [ord(c) for c in gb.PROBES], (32,))
    assert gb.probe_accuracy({k: v[0] for k, v in sym.items()}, refs) < gb.MIN_PROBE_ACCURACY


def test_clone_families_count_once(tmp_path):
    from fontTools.ttLib import TTFont

    clone = TTFont(str(FONTS / "DejaVuSans.ttf"))
    for rec in clone["name"].names:
        if rec.nameID in (1, 16):
            rec.string = "Bitstream Vera Sans"
    clone.save(str(tmp_path / "Vera.ttf"))
    kept, rejected = gb.select_faces([FONTS / "DejaVuSans.ttf", tmp_path / "Vera.ttf"], LATIN)
    assert len(kept) == 1
    assert any("clone of" in r["reason"] for r in rejected)


def test_homoglyphs_collapse_but_siblings_stay_apart():
    letters = [ord("x"), 0x0445, ord("e"), 0x00E9, 0x00E8, ord("M"), 0x041C, ord("b")]  # x, х, e, é, è, M, М, b
    renders = [{cp: imgs[0] for cp, imgs in gb.render_face(str(FONTS / f), letters, (32,)).items()}
               for f in ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSans-Bold.ttf")]
    groups = gb.homoglyph_groups(renders)
    assert [ord("M"), 0x041C] in groups and [ord("x"), 0x0445] in groups
    assert not any(0x00E9 in g or ord("e") in g for g in groups), "accented siblings must stay apart"


def test_glyphs_are_centred_and_never_clipped():
    tall = [0x01FA, ord("g"), ord("W"), 0x1EA4, ord("i")]  # Ǻ (ring and acute above), g, W, Ấ, i
    out = gb.render_face(str(FONTS / "DejaVuSerif.ttf"), tall, (32,))
    for cp, (img,) in out.items():
        assert img.shape == (32, 32)
        ys, xs = np.nonzero(img > 8)
        assert ys.min() > 0 and xs.min() > 0 and ys.max() < 31 and xs.max() < 31, f"U+{cp:04X} touches the edge"
        cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
        assert abs(cy - 15.5) <= 1.0 and abs(cx - 15.5) <= 1.0, f"U+{cp:04X} is not centred"
    # relative size survives: lower-case o is smaller than capital O
    oo = gb.render_face(str(FONTS / "DejaVuSans.ttf"), [ord("o"), ord("O")], (32,))
    assert (oo[ord("o")][0] > 8).sum() < (oo[ord("O")][0] > 8).sum()


def test_split_by_group_is_seeded_and_group_disjoint():
    groups = [f"g{i // 3}" for i in range(60)] + [f"big{i // 6}" for i in range(60)]
    a = split_by_group(groups, (0.6, 0.2, 0.2), seed=0)
    assert a == split_by_group(groups, (0.6, 0.2, 0.2), seed=0)
    assert a != split_by_group(groups, (0.6, 0.2, 0.2), seed=1)
    assert sorted(sum(a.values(), [])) == list(range(120))
    owner = {}
    for split, classes in a.items():
        for c in classes:
            assert owner.setdefault(groups[c], split) == split
    assert all(any(groups[c].startswith("big") for c in v) for v in a.values()), "rich groups in every split"
