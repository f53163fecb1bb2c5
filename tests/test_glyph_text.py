"""Generated glyph descriptions: facts from the Unicode database and the face, partial, reproducible."""

import numpy as np

from cmkd.data.formats.glyph_text import (
    decode_captions,
    describe,
    encode_captions,
    face_words,
    generate_for_manifest,
    glyph_facts,
)
from cmkd.data.formats.glyphs import glyph_dir


def test_facts_from_the_nfd_decomposition_and_names():
    f = glyph_facts("\u1ec7")  # LATIN SMALL LETTER E WITH CIRCUMFLEX AND DOT BELOW
    assert (f.script, f.case, f.letter) == ("latin", "lowercase", "e")
    assert set(f.marks) == {("dot below", "below"), ("circumflex accent", "above")}
    stroke = glyph_facts("\u01ff")  # LATIN SMALL LETTER O WITH STROKE AND ACUTE: the stroke does not decompose
    assert ("stroke", "through") in stroke.marks and ("acute accent", "above") in stroke.marks
    turned = glyph_facts("\u0250")  # LATIN SMALL LETTER TURNED A
    assert turned.letter == "a" and turned.forms == ("turned",) and turned.marks == ()
    greek = glyph_facts("\u1f00")  # GREEK SMALL LETTER ALPHA WITH PSILI
    assert (greek.script, greek.letter, greek.marks) == ("greek", "alpha", (("comma above", "above"),))


def test_face_words_only_where_the_family_says_so():
    assert face_words("DejaVu Sans Mono", "bold italic") == {
        "weight": "bold", "slant": "italic", "style_class": "monospaced", "width": None, "family": "DejaVu Sans Mono"}
    assert face_words("Lato", "regular")["style_class"] is None
    assert face_words("Roboto Condensed", "regular")["width"] == "condensed"


def test_captions_never_state_a_false_fact():
    facts, face = glyph_facts("\u00e9"), face_words("DejaVu Serif", "regular")
    rng = np.random.default_rng(0)
    caps = [describe(facts, face, rng) for _ in range(400)]
    text = " ".join(caps)
    for false in ("grave", "bold", "italic", "capital", "greek", "below", "two marks", "sans"):
        assert false not in text, false
    assert any("acute accent" in c for c in caps) and any("a mark above it" in c for c in caps)
    assert any("acute" not in c and "mark" not in c for c in caps), "some captions leave out the detail"


def test_encoding_round_trip():
    caps = [("a b", "c"), ("c", "a b")]
    assert decode_captions(encode_captions(caps)) == caps


def test_shipped_descriptions_are_reproduced_by_the_generator():
    with np.load(glyph_dir() / "descriptions.npz") as arrays:
        shipped = decode_captions(arrays)
    assert generate_for_manifest(glyph_dir()) == shipped
