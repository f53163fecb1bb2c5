"""Per-image descriptions of the glyphs: partial, CUB-like captions generated from real data.

A glyph's Unicode name names exactly what separates it from its siblings, which makes any
model that reads it an oracle. Crowd-sourced captions (Reed et al. 2016's ten per CUB image)
are different: each mentions a few visible parts, often not the one that matters. These
descriptions imitate that. The facts come from the Unicode character database (the NFD
decomposition, the names and canonical combining classes of the combining marks, script,
case and letterform words of the base letter's name) and from each rendering's font face
(family, weight, slant; serif / sans-serif / monospaced and width only where the family name
says so). Every caption is one sentence naming a random subset of these facts; a mark is named
precisely ("an acute accent") or vaguely ("a mark above it"), so a caption may leave out the
discriminating detail. One seeded stream draws the captions of the images in order.

The probabilities (:data:`P`) were fixed before any model was trained on these captions.
The generated captions ship with the package (``glyphs/descriptions.npz``), so the dataset
does not change with the numpy version; ``python -m cmkd.data.formats.glyph_text`` rewrites
them (and a test checks that it reproduces the shipped file).
"""

from __future__ import annotations

import hashlib
import io
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Probability that a caption mentions each kind of fact (each drawn independently).
P = {
    "letter": 0.5,  # the base letter ("the letter e", "an omega")
    "case": 0.5,  # lowercase / capital
    "script": 0.4,  # latin / greek / cyrillic
    "form": 0.6,  # each letterform word of the name (turned, reversed, small capital, ...)
    "mark": 0.6,  # each mark ...
    "mark_precise": 0.5,  # ... named precisely when mentioned, else only by its position
    "mark_count": 0.25,  # "it carries two marks" / "it has no marks"
    "weight": 0.3,  # bold / regular weight
    "slant": 0.3,  # italic / upright
    "style_class": 0.3,  # serif / sans-serif / monospaced, where the family name says so
    "width": 0.3,  # condensed / narrow, where the family name says so
    "family": 0.2,  # "set in DejaVu Serif"
}
CAPTIONS_PER_IMAGE = 10
SEED = 2021

SCRIPTS = ("LATIN", "GREEK", "CYRILLIC", "COPTIC")
#: Words of letter names that describe the letterform rather than the letter.
FORM_WORDS = ("TURNED", "REVERSED", "INVERTED", "OPEN", "CLOSED", "LONG", "SCRIPT", "DOTLESS", "SIDEWAYS",
              "BARRED", "ARCHAIC", "LUNATE", "STRETCHED", "BROKEN", "SMALL CAPITAL", "IOTIFIED", "CLOSED REVERSED")
#: Canonical combining class -> where a mark sits (Unicode Standard, table 4-4).
POSITION = {230: "above", 232: "above", 216: "above", 220: "below", 202: "below", 240: "below", 1: "through"}
_POSITION_WORDS = {"ABOVE": "above", "BELOW": "below", "STROKE": "through", "BAR": "through", "TOPBAR": "above",
                   "MIDDLE": "through"}
VAGUE = {"above": "a mark above it", "below": "a mark below it", "through": "a line through it",
         "attached": "an extra hook or tail"}
NUMBERS = ("no", "one", "two", "three", "four")


@dataclass(frozen=True)
class GlyphFacts:
    """What the Unicode character database says about a letter."""

    script: str | None  # 'latin', ...
    case: str | None  # 'lowercase', 'capital'
    letter: str  # 'e', 'omega', 'komi dzje'
    forms: tuple[str, ...]  # 'turned', ...
    marks: tuple[tuple[str, str], ...]  # (precise name, position)


def _split_name(name: str) -> tuple[str | None, str | None, list[str], str]:
    words = name.split(" WITH ")[0].split()
    script = words.pop(0) if words and words[0] in SCRIPTS else None
    case = None
    if words and words[0] in ("SMALL", "CAPITAL"):
        case = "lowercase" if words.pop(0) == "SMALL" else "capital"
    if "LETTER" in words:
        words = words[words.index("LETTER") + 1:]
    text = " ".join(words)
    forms = []
    for form in sorted(FORM_WORDS, key=len, reverse=True):
        if f"{form} " in f"{text} " and text != form:
            forms.append(form.lower())
            text = f"{text} ".replace(f"{form} ", "", 1).strip()
    return script, case, forms, text.lower() or name.lower()


def _name_marks(name: str) -> list[tuple[str, str]]:
    """Marks named after WITH in a character name (for letters that do not decompose)."""
    if " WITH " not in name:
        return []
    out = []
    for part in name.split(" WITH ", 1)[1].split(" AND "):
        words = part.split()
        where = next((_POSITION_WORDS[w] for w in reversed(words) if w in _POSITION_WORDS), "attached")
        out.append((part.lower(), where))
    return out


def glyph_facts(char: str) -> GlyphFacts:
    """Facts of a letter from its NFD decomposition and the names of its parts."""
    nfd = unicodedata.normalize("NFD", char)
    base = nfd[0]
    base_name = unicodedata.name(base)
    script, case, forms, letter = _split_name(base_name)
    marks = _name_marks(base_name)  # e.g. the stroke of o-with-stroke, which does not decompose
    for m in nfd[1:]:
        name = unicodedata.name(m).removeprefix("COMBINING ").removeprefix("GREEK ").lower()
        marks.append((name, POSITION.get(unicodedata.combining(m), "attached")))
    return GlyphFacts(script.lower() if script else None, case, letter, tuple(forms), tuple(marks))


def face_words(family: str, style: str) -> dict[str, str | None]:
    """Weight and slant from the face's style; serif class and width only where the family name says so."""
    fam = family.lower()
    style_class = ("monospaced" if "mono" in fam or "code" in fam else "sans-serif" if "sans" in fam
                   else "serif" if "serif" in fam else None)
    width = "condensed" if "condensed" in fam else "narrow" if "narrow" in fam else None
    return {"weight": "bold" if "bold" in style else "regular weight",
            "slant": "italic" if "italic" in style or "oblique" in style else "upright",
            "style_class": style_class, "width": width, "family": family}


def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def describe(facts: GlyphFacts, face: dict[str, str | None], rng: np.random.Generator) -> str:
    """One caption: a sentence naming a random subset of the facts."""
    def say(kind: str) -> bool:
        return bool(rng.random() < P[kind])

    adjectives: list[str] = []
    for kind in ("weight", "slant", "width", "style_class"):
        value = face[kind]
        if value and say(kind):
            adjectives.append(value)
    if facts.case and say("case"):
        adjectives.append(facts.case)
    if facts.script and say("script"):
        adjectives.append(facts.script)
    adjectives += [f for f in facts.forms if say("form")]
    noun = "letter " + facts.letter if say("letter") else "letter"
    mentioned: list[str] = []
    for precise, where in facts.marks:
        if say("mark"):
            mentioned.append(_article(precise) if say("mark_precise") else VAGUE[where])
    parts = [_article(" ".join([*adjectives, noun]))]
    if mentioned:
        parts.append("with " + _join(mentioned))
    if say("mark_count"):
        n = len(facts.marks)
        parts.append(f"; it has {NUMBERS[min(n, 4)]} mark{'s' if n != 1 else ''}")
    if face["family"] and say("family"):
        parts.append(f", set in {face['family']}")
    frame = rng.integers(3)
    sentence = " ".join(parts).replace(" ;", ";").replace(" ,", ",")
    return (sentence, "this glyph is " + sentence, "the picture shows " + sentence)[frame]


def glyph_descriptions(chars: list[str], faces: list[tuple[str, str]], labels: np.ndarray, face_ids: np.ndarray,
                       per_image: int = CAPTIONS_PER_IMAGE, seed: int = SEED) -> list[tuple[str, ...]]:
    """``per_image`` captions for every image (class ``labels[i]``, face ``face_ids[i]``)."""
    facts = [glyph_facts(c) for c in chars]
    face_info = [face_words(f, s) for f, s in faces]
    rng = np.random.default_rng(seed)
    return [tuple(describe(facts[c], face_info[f], rng) for _ in range(per_image))
            for c, f in zip(labels.tolist(), face_ids.tolist())]


def encode_captions(captions: list[tuple[str, ...]]) -> dict[str, np.ndarray]:
    """Captions as arrays: the distinct sentences (UTF-8, newline-separated) and ids per image."""
    distinct = sorted({c for caps in captions for c in caps})
    index = {c: i for i, c in enumerate(distinct)}
    ids = np.array([[index[c] for c in caps] for caps in captions], dtype=np.int32)
    return {"text": np.frombuffer("\n".join(distinct).encode(), dtype=np.uint8), "ids": ids}


def decode_captions(arrays: dict[str, np.ndarray]) -> list[tuple[str, ...]]:
    distinct = arrays["text"].tobytes().decode().split("\n")
    return [tuple(distinct[j] for j in row) for row in arrays["ids"].tolist()]


def generate_for_manifest(folder: Path) -> list[tuple[str, ...]]:
    """The descriptions of the glyph dataset in ``folder`` (its manifest and arrays)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    with np.load(folder / f"glyphs{manifest['sizes'][0]}.npz") as arrays:
        labels, faces = arrays["labels"], arrays["faces"]
    return glyph_descriptions([c["char"] for c in manifest["classes"]],
                              [(f["family"], f["style"]) for f in manifest["faces"]], labels, faces)


def write_descriptions(folder: Path) -> dict:
    """Generate and store ``descriptions.npz`` beside the glyphs; record it in the manifest."""
    captions = generate_for_manifest(folder)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **encode_captions(captions))  # type: ignore[arg-type]
    (folder / "descriptions.npz").write_bytes(buffer.getvalue())
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["descriptions"] = {
        "file": "descriptions.npz", "per_image": CAPTIONS_PER_IMAGE, "seed": SEED,
        "distinct": len({c for caps in captions for c in caps}), "probabilities": P,
        "generator": "cmkd.data.formats.glyph_text: one sentence per caption naming a random subset of the "
                     "letter's facts (Unicode NFD marks with their combining-class position, script, case, "
                     "letterform words) and its face's (weight, slant, serif class and width where the family "
                     "name says so, family); each mark named precisely or only by its position",
    }
    manifest["files_sha256"]["descriptions.npz"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    path.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest["descriptions"]


if __name__ == "__main__":
    out = Path(__file__).resolve().parents[1] / "glyphs"
    print(write_descriptions(out))
