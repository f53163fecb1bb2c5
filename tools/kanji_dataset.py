"""Build the kanji development dataset from Debian packages: KANJIDIC meanings + CJK font renderings.

Classes are the Jōyō kanji (KANJIDIC grades 1-8); each image is one kanji drawn by one CJK font
face from Debian's font packages; the text of a class is its English meanings from KANJIDIC
(one caption line per meaning, class-level like the captions of many real datasets); the
fine-grained group of a class is its classical radical (KANJIDIC field ``B``, named after the
Unicode Kangxi radical). The result is an image folder in the format ``cmkd prepare folder``
reads (``ROOT/<class>/<face>.png``, ``captions.txt`` per class, ``groups.json``), plus
``ATTRIBUTION.md`` and ``manifest.json``. It is not shipped with cmkd (KANJIDIC is CC BY-SA 3.0;
the fonts keep their own licences). Needs fontTools (``pip install -e .[dev]``) and:

    apt-get install kanjidic $(python tools/kanji_dataset.py --print-packages)
    python tools/kanji_dataset.py --out ~/.cache/cmkd/sources/kanji
    cmkd prepare folder --root ~/.cache/cmkd/sources/kanji --size 32 --channels 1 --name kanji32

The build is deterministic for the same package versions (recorded in the manifest).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import unicodedata
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from glyph_builder import CLONE_COSINE, Face, _debian_package, _unit, read_styled_face, render_face

KANJIDIC = Path("/usr/share/edict/kanjidic")
FONT_PACKAGES = (
    "fonts-ipafont-gothic fonts-ipafont-mincho fonts-ipaexfont-gothic fonts-ipaexfont-mincho fonts-takao-gothic "
    "fonts-vlgothic fonts-noto-cjk fonts-arphic-ukai fonts-arphic-uming fonts-wqy-zenhei fonts-wqy-microhei "
    "fonts-hanazono fonts-horai-umefont fonts-sawarabi-mincho fonts-sawarabi-gothic fonts-seto fonts-kiloji "
    "fonts-kouzan-mouhitsu fonts-morisawa-bizud-gothic fonts-morisawa-bizud-mincho fonts-lxgw-wenkai "
    "fonts-dotgothic16 fonts-monapo fonts-motoya-l-cedar fonts-motoya-l-maruberi fonts-klee fonts-mplus "
    "fonts-migmix fonts-aoyagi-soseki fonts-aoyagi-kouzan-t fonts-dejima-mincho fonts-oradano-mincho-gsrr "
    "fonts-ipamj-mincho fonts-konatu fonts-misaki fonts-umeplus fonts-train fonts-reggae"
).split()
STYLES = {"regular": "regular", "book": "regular", "medium": "regular", "r": "regular", "bold": "bold"}
RENDER = 64  # pixels of the written images (prepare resizes them)
MIN_COVERAGE = 0.9  # a face must draw this share of the Jōyō kanji
MIN_FACES = 8  # a kanji needs this many distinct faces to become a class
PROBES = 60  # kanji drawn by every face to find clones (faces sharing the same glyph outlines)


def read_kanjidic(path: Path = KANJIDIC) -> list[dict]:
    """Jōyō kanji (grades 1-8) with code point, radical, stroke count and English meanings."""
    out = []
    for line in path.read_bytes().decode("euc_jp").splitlines():
        if line.startswith("#"):
            continue
        head, _, rest = line.partition("{")
        fields = head.split()
        char = fields[0]
        info = {f[0]: f[1:] for f in fields[2:] if f[0] in "BGS"}
        grade = int(info.get("G", 0) or 0)
        if not 1 <= grade <= 8:
            continue
        meanings = [m.strip() for m in ("{" + rest).split("}") if m.strip().startswith("{")]
        meanings = [m[1:].strip() for m in meanings if m[1:].strip()]
        if not meanings:
            continue
        out.append({"char": char, "codepoint": f"U+{ord(char):04X}", "radical": int(info["B"]), "grade": grade,
                    "strokes": int(info.get("S", 0) or 0), "meanings": meanings})
    return out


def radical_name(number: int) -> str:
    """'radical 075 tree' from the Unicode Kangxi radical U+2F00 + number - 1."""
    return f"radical {number:03d} {unicodedata.name(chr(0x2F00 + number - 1)).removeprefix('KANGXI RADICAL ').lower()}"


def package_files(packages: list[str]) -> list[Path]:
    files = []
    for pkg in packages:
        listed = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True)
        if listed.returncode != 0:
            print(f"warning: {pkg} is not installed; skipped", file=sys.stderr)
            continue
        files += [Path(p) for p in listed.stdout.split() if p.endswith((".ttf", ".otf", ".ttc"))
                  and p.startswith("/usr/share/fonts")]
    return sorted(set(files))


def candidate_faces(files: list[Path], kanji: list[int]) -> tuple[list[tuple[Face, list[int]]], list[dict]]:
    kept, rejected = [], []
    for path in files:
        read = read_styled_face(path, STYLES)
        if isinstance(read, str):
            rejected.append({"path": str(path), "reason": read})
            continue
        face, cmap, style = read
        covered = [cp for cp in kanji if cmap.get(cp, ".notdef") not in (".notdef", "")]
        if len(covered) < MIN_COVERAGE * len(kanji):
            rejected.append({"path": str(path), "reason": f"draws {len(covered)} of {len(kanji)} kanji"})
            continue
        package, version = _debian_package(str(path))
        kept.append((Face(**{**asdict(face), "style": style, "package": package, "version": version}), covered,
                     face.style != style))
    # one face per family and style: a 'regular' file wins over a 'medium' or 'book' one mapped to regular
    kept.sort(key=lambda k: (k[0].family, k[0].style, k[2], k[0].path))
    out, seen = [], set()
    for face, covered, _ in kept:
        if (face.family, face.style) in seen:
            rejected.append({"path": face.path, "reason": f"another {face.family} {face.style} file is kept"})
        else:
            seen.add((face.family, face.style))
            out.append((face, covered))
    return out, rejected


def drop_clones(faces: list[tuple[Face, list[int]]], probes: list[int]) -> tuple[list[int], list[dict]]:
    """Indices of faces to keep: a face whose probe kanji mostly match a larger face's is a clone."""
    renders, rejected = [], []
    for f, c in faces:
        try:
            renders.append(render_face(f.path, [p for p in probes if p in set(c)], (32,)))
        except OSError as err:  # e.g. TrueType hinting bytecode FreeType refuses
            renders.append(None)
            rejected.append({"path": f.path, "reason": f"FreeType cannot draw it ({err})"})
    order = sorted((i for i in range(len(faces)) if renders[i] is not None),
                   key=lambda i: (-len(faces[i][1]), faces[i][0].family, faces[i][0].style))
    keep = []
    for i in order:
        twin = next((j for j in keep if faces[j][0].style == faces[i][0].style
                     and _same_design(renders[i], renders[j])), None)
        if twin is None:
            keep.append(i)
        else:
            rejected.append({"path": faces[i][0].path, "reason": f"same outlines as {faces[twin][0].path}"})
    return sorted(keep), rejected


def _same_design(a: dict, b: dict, share: float = 0.8) -> bool:
    common = [cp for cp in a if cp in b]
    return bool(common) and np.mean([_unit(a[cp][0]) @ _unit(b[cp][0]) > CLONE_COSINE for cp in common]) > share


def _render(job: tuple[str, list[int]]) -> dict[int, np.ndarray]:
    path, cps = job
    return {cp: imgs[0] for cp, imgs in render_face(path, cps, (RENDER,)).items()}


def build(out: Path, workers: int = 2) -> dict:
    entries = read_kanjidic()
    kanji = [ord(e["char"]) for e in entries]
    faces, rejected = candidate_faces(package_files(FONT_PACKAGES), kanji)
    rng = np.random.default_rng(0)
    probes = sorted(rng.choice(kanji, PROBES, replace=False).tolist())
    keep, clones = drop_clones(faces, probes)
    rejected += clones
    faces = [faces[i] for i in keep]
    print(f"{len(faces)} faces kept, {len(rejected)} files rejected", flush=True)
    with ProcessPoolExecutor(workers) as pool:
        renders = list(pool.map(_render, [(f.path, c) for f, c in faces]))
    out.mkdir(parents=True, exist_ok=True)
    classes, groups = [], {}
    for entry, cp in zip(entries, kanji):
        drawn = [(fi, r[cp]) for fi, r in enumerate(renders) if cp in r]
        if len(drawn) < MIN_FACES:
            continue
        name = f"{entry['codepoint']} {entry['char']}"
        folder = out / name
        folder.mkdir(exist_ok=True)
        for fi, img in drawn:
            f = faces[fi][0]
            Image.fromarray(img).save(folder / f"{f.family} {f.style}.png".replace("/", "-"))  # unique per face
        (folder / "captions.txt").write_text("\n".join(entry["meanings"]) + "\n", encoding="utf-8")
        groups[name] = radical_name(entry["radical"])
        classes.append({**entry, "class": name, "faces": len(drawn)})
    (out / "groups.json").write_text(json.dumps(groups, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    kanjidic_version = _debian_package(str(KANJIDIC))
    manifest = {
        "name": "kanji", "source": f"KANJIDIC (Debian package kanjidic {kanjidic_version[1]}), Jōyō grades 1-8",
        "text": "English meanings of the kanji (one caption per meaning, the same for every image of a class)",
        "groups": "classical radical (KANJIDIC field B), named after the Unicode Kangxi radical",
        "render_px": RENDER, "min_faces": MIN_FACES, "min_coverage": MIN_COVERAGE,
        "counts": {"classes": len(classes), "images": sum(c["faces"] for c in classes), "faces": len(faces),
                   "groups": len(set(groups.values()))},
        "faces": [asdict(f) for f, _ in faces], "rejected_files": rejected, "classes": classes,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    _attribution(out / "ATTRIBUTION.md", faces, kanjidic_version)
    return manifest


def _attribution(path: Path, faces: list[tuple[Face, list[int]]], kanjidic: tuple[str, str]) -> None:
    lines = ["# Kanji dataset: attribution and licences", "",
             "Text: KANJIDIC, Copyright the Electronic Dictionary Research and Development Group (EDRDG), used under",
             "the Creative Commons Attribution-ShareAlike 3.0 licence (EDRDG licence statement,",
             f"https://www.edrdg.org/edrdg/licence.html); Debian package {kanjidic[0]} {kanjidic[1]}.",
             "Radical names: the Unicode Character Database (Kangxi Radicals block).", "",
             "Images: renderings of the fonts below; each keeps its own licence.", "",
             "| family | style | Debian package (version) | licence | copyright |", "|---|---|---|---|---|"]
    for f, _ in faces:
        lines.append(f"| {f.family} | {f.style} | {f.package} ({f.version}) | {f.license or 'see package'} "
                     f"| {f.copyright.replace('|', '/')} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path.home() / ".cache" / "cmkd" / "sources" / "kanji")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--print-packages", action="store_true", help="print the Debian font packages and exit")
    args = ap.parse_args()
    if args.print_packages:
        print(" ".join(FONT_PACKAGES))
        return
    m = build(args.out, args.workers)
    print(f"{args.out}: {m['counts']}")


if __name__ == "__main__":
    main()
