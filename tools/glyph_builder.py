"""Deterministic builder of the embedded glyph dataset (a maintainer tool: ``make glyphs``).

Renders the letters (Unicode category L*) of the Latin, Greek and Cyrillic blocks with
every usable font face found on this machine, and writes compact uint8 arrays plus a
manifest into ``src/cmkd/data/glyphs``. Only maintainers run it (``make glyphs``); users
and CI load the shipped arrays. Needs ``fontTools`` (the ``build`` extra) and the Debian
font packages listed in ``FONT_PACKAGES``.

The pitfalls it guards against, each one a small function with a test:

* Pillow has no font fallback: a face renders only code points its cmap maps
  (:func:`covered_letters`).
* Placeholder fonts (LastResort) map every code point to a handful of glyphs
  (:func:`is_placeholder`).
* TeX-encoded and symbol fonts put other shapes on Latin code points; the glyph names
  betray them (:func:`misencoded_letters`).
* Clone and metric-compatible families count once (:data:`CLONE_FAMILIES` plus a
  rendering fingerprint).
* Homoglyphs (Latin ``x`` = Cyrillic ``ha``) render identically and collapse to one class
  (:func:`homoglyph_groups`).
* Glyphs are centred on their ink box and scaled down, never clipped, when too large
  (:func:`render_face`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import unicodedata
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cmkd.data.formats.glyph_text import write_descriptions
from cmkd.data.splits import split_by_group

BLOCKS: dict[str, tuple[int, int]] = {
    "Basic Latin": (0x0000, 0x007F),
    "Latin-1 Supplement": (0x0080, 0x00FF),
    "Latin Extended-A": (0x0100, 0x017F),
    "Latin Extended-B": (0x0180, 0x024F),
    "IPA Extensions": (0x0250, 0x02AF),
    "Greek and Coptic": (0x0370, 0x03FF),
    "Cyrillic": (0x0400, 0x04FF),
    "Cyrillic Supplement": (0x0500, 0x052F),
    "Latin Extended Additional": (0x1E00, 0x1EFF),
    "Greek Extended": (0x1F00, 0x1FFF),
}

FONT_PACKAGES = (
    "fonts-dejavu-core fonts-noto-core fonts-liberation2 fonts-freefont-ttf fonts-sil-charis "
    "fonts-sil-andika fonts-sil-doulos fonts-sil-gentiumplus fonts-linuxlibertine fonts-lato "
    "fonts-roboto-unhinted fonts-crosextra-carlito fonts-cantarell fonts-firacode "
    "fonts-open-sans fonts-ebgaramond fonts-texgyre fonts-urw-base35"
).split()

FONT_DIRS = ("/usr/share/fonts", "/usr/share/texmf/fonts/opentype")

#: Families that are clones or metric-compatible re-drawings of one design. Each maps to
#: the name of its design; only the member covering the most letters is rendered.
CLONE_FAMILIES: dict[str, str] = {
    "Liberation Sans": "arimo", "Arimo": "arimo",
    "Liberation Serif": "tinos", "Tinos": "tinos",
    "Liberation Mono": "cousine", "Cousine": "cousine",
    "FreeSans": "nimbus-sans", "Nimbus Sans": "nimbus-sans", "Nimbus Sans L": "nimbus-sans",
    "TeX Gyre Heros": "nimbus-sans",
    "FreeSerif": "nimbus-roman", "Nimbus Roman": "nimbus-roman", "TeX Gyre Termes": "nimbus-roman",
    "FreeMono": "nimbus-mono", "Nimbus Mono PS": "nimbus-mono", "TeX Gyre Cursor": "nimbus-mono",
    "P052": "palatino", "TeX Gyre Pagella": "palatino",
    "C059": "century", "TeX Gyre Schola": "century",
    "URW Bookman": "bookman", "TeX Gyre Bonum": "bookman",
    "URW Gothic": "avant-garde", "TeX Gyre Adventor": "avant-garde",
    "Z003": "chancery", "TeX Gyre Chorus": "chancery",
    "DejaVu Sans Mono": "vera-mono", "Hack": "vera-mono", "Bitstream Vera Sans Mono": "vera-mono",
    "DejaVu Sans": "vera-sans", "Bitstream Vera Sans": "vera-sans",
    "DejaVu Serif": "vera-serif", "Bitstream Vera Serif": "vera-serif",
    "Carlito": "calibri", "Calibri": "calibri",
    "Caladea": "cambria", "Cambria": "cambria",
    "Open Sans": "open-sans", "Noto Sans": "open-sans",
    "Noto Mono": "noto-mono", "Noto Sans Mono": "noto-mono",
    "Linux Libertine O": "libertine", "Libertinus Serif": "libertine", "Linux Libertine Display O": "libertine",
    # display cuts and math/symbol companions reuse the Latin letters of their text family
    "Noto Sans Display": "open-sans", "Noto Sans Math": "open-sans", "Noto Sans Symbols": "open-sans",
    "Noto Traditional Nushu": "open-sans", "Noto Serif Display": "noto-serif", "Noto Serif": "noto-serif",
    "TeX Gyre Termes Math": "nimbus-roman", "TeX Gyre Pagella Math": "palatino",
    "TeX Gyre Schola Math": "century", "TeX Gyre Bonum Math": "bookman",
    "TeX Gyre DejaVu Math": "vera-serif", "DejaVu Math TeX Gyre": "vera-serif",
    "Nimbus Sans Narrow": "nimbus-sans-narrow", "TeX Gyre Heros Cn": "nimbus-sans-narrow",
}

#: Face styles kept: the classic four (and their spelling variants).
STYLES = {
    "regular": "regular", "roman": "regular", "book": "regular", "normal": "regular",
    "bold": "bold", "italic": "italic", "oblique": "italic", "medium italic": "italic",
    "bold italic": "bold italic", "bold oblique": "bold italic",
}

RENDER_SCALE = 4  # glyphs are drawn at 4x the largest output size, then box-filtered down
MARGIN = 6  # drawing pixels (1.5 output pixels) kept empty on every side
BOX_FRACTION = 0.875  # the ink box of a typical glyph fills this share of the canvas
TOLERANCE = 48.0  # two renderings are 'the same' when no pixel differs by this much (of 255)
PROBES = "ABDEFGHKMNPRabdefghkmnpqrt"  # Basic Latin letters of distinct shapes
MIN_PROBE_ACCURACY = 0.7  # a face must draw most probe letters recognisably
CLONE_COSINE = 0.97  # probe shapes this similar (cosine of normalised ink boxes) count as one design


@dataclass(frozen=True)
class Face:
    """One font face: a file, its family and style, and where it came from."""

    path: str
    family: str
    style: str
    design: str
    package: str = "unknown"
    version: str = "unknown"
    license: str = "unknown"
    copyright: str = ""


def letters_of_blocks(blocks: Iterable[tuple[int, int]] = BLOCKS.values()) -> list[int]:
    """Code points of category L* (letters) in the given blocks, ascending."""
    out = []
    for lo, hi in blocks:
        for cp in range(lo, hi + 1):
            if unicodedata.category(chr(cp)).startswith("L") and unicodedata.name(chr(cp), ""):
                out.append(cp)
    return out


def letter_group(name: str) -> str:
    """Fine-grained group of a letter: its base letter, the part of the name before ' WITH '."""
    return name.split(" WITH ")[0]


def covered_letters(cmap: dict[int, str], letters: Sequence[int]) -> list[int]:
    """Letters the face really maps (Pillow has no fallback: an unmapped code point is .notdef)."""
    return [cp for cp in letters if cmap.get(cp, ".notdef") not in (".notdef", "")]


def is_placeholder(cmap: dict[int, str], letters: Sequence[int]) -> bool:
    """True for a LastResort-style font: its cmap 'covers' letters with a few shared glyphs."""
    covered = covered_letters(cmap, letters)
    if len(covered) < 20:
        return False
    return len({cmap[cp] for cp in covered}) < 0.5 * len(covered)


def misencoded_letters(cmap: dict[int, str], letters: Sequence[int]) -> list[int]:
    """Letters whose glyph name (Adobe Glyph List) decodes to another character.

    TeX-encoded fonts (``cmr10``: U+00C0 -> ``AE``) and symbol fonts (``cmex10``: 'A' ->
    ``parenrightbt``) betray themselves this way. Generic names (``uni00E9``, ``glyph12``)
    decode to the right character or to nothing and pass.
    """
    from fontTools import agl

    bad = []
    for cp in covered_letters(cmap, letters):
        decoded = agl.toUnicode(cmap[cp])
        # legacy AGL names of a few extra letters point into the private-use area (dotlessj ->
        # U+F6BE) and say nothing; on an ASCII letter such a name is a foreign glyph (cmex10)
        legacy = len(decoded) == 1 and 0xE000 <= ord(decoded) <= 0xF8FF and cp >= 0x80
        if decoded and decoded != chr(cp) and not legacy:
            bad.append(cp)
    return bad


def read_styled_face(path: Path, styles: dict[str, str]) -> tuple[Face, dict[int, str], str] | str:
    """A font file's face, cmap and style mapped through ``styles``; or why the file is rejected."""
    read = read_face(path)
    if read is None:
        return "unreadable or no Unicode cmap"
    face, cmap = read
    style = styles.get(face.style)
    if style is None:
        return f"style {face.style!r} not kept"
    return face, cmap, style


def read_face(path: Path) -> tuple[Face, dict[int, str]] | None:
    """Family, style and cmap of a font file; None when it has no Unicode cmap."""
    from fontTools.ttLib import TTFont

    try:
        font = TTFont(str(path), lazy=True, fontNumber=0)
        cmap = font.getBestCmap() or {}
        names = font["name"]
    except Exception:  # unreadable or exotic container: not a face we can use
        return None

    def name(*ids: int) -> str:
        for i in ids:
            rec = names.getDebugName(i)
            if rec:
                return rec.strip()
        return ""

    family = name(16, 1)
    style = name(17, 2).lower()
    licence = name(13).splitlines()[0] if name(13) else ""
    face = Face(
        path=str(path),
        family=family,
        style=style,
        design=CLONE_FAMILIES.get(family, family.lower().replace(" ", "-")),
        license=licence or name(14),
        copyright=name(0).splitlines()[0] if name(0) else "",
    )
    return face, cmap


def _debian_package(path: str) -> tuple[str, str]:
    try:
        pkg = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True, check=True)
        package = pkg.stdout.split(":")[0].strip()
        ver = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=True
        )
        return package, ver.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown", "unknown"


def select_faces(
    paths: Iterable[Path], letters: Sequence[int], min_letters: int = 52
) -> tuple[list[tuple[Face, list[int]]], list[dict]]:
    """Usable faces and their covered letters, plus a log of rejected ones with the reason.

    One design (clone family) is kept once: the family covering the most letters wins.
    """
    candidates: list[tuple[Face, list[int]]] = []
    rejected: list[dict] = []
    for path in sorted(paths):
        read = read_styled_face(path, STYLES)
        if isinstance(read, str):
            rejected.append({"path": str(path), "reason": read})
            continue
        face, cmap, style = read
        if is_placeholder(cmap, letters):
            rejected.append({"path": str(path), "reason": "placeholder glyphs (LastResort-like)"})
            continue
        covered = covered_letters(cmap, letters)
        bad = set(misencoded_letters(cmap, letters))
        if len(bad) > 0.02 * max(len(covered), 1):
            rejected.append({"path": str(path), "reason": f"re-encoded: {len(bad)} letters carry other glyphs"})
            continue
        covered = [cp for cp in covered if cp not in bad]
        if len(covered) < min_letters:
            rejected.append({"path": str(path), "reason": f"covers only {len(covered)} letters"})
            continue
        candidates.append((Face(**{**asdict(face), "style": style}), covered))

    best_family: dict[str, tuple[int, str]] = {}
    for face, covered in candidates:
        best = best_family.get(face.design)
        if best is None or (len(covered), face.family) > best:
            best_family[face.design] = (len(covered), face.family)
    kept, seen = [], set()
    for face, covered in candidates:
        key = (face.family, face.style)
        if face.family != best_family[face.design][1]:
            rejected.append({"path": face.path, "reason": f"clone of {best_family[face.design][1]}"})
        elif key in seen:
            rejected.append({"path": face.path, "reason": "duplicate family and style"})
        else:
            seen.add(key)
            kept.append((face, covered))
    return kept, rejected


def _ink_crop(font: ImageFont.FreeTypeFont, ch: str, em: int) -> Image.Image | None:
    canvas = Image.new("L", (4 * em, 4 * em), 0)
    ImageDraw.Draw(canvas).text((1.5 * em, 1.5 * em), ch, fill=255, font=font)
    box = canvas.getbbox()
    if box is None:
        return None
    left, top, right, bottom = box
    if left == 0 or top == 0 or right == canvas.width or bottom == canvas.height:
        raise RuntimeError(f"{ch!r} touches the scratch canvas edge; enlarge it")
    return canvas.crop(box)


def render_face(face_path: str, letters: Sequence[int], sizes: Sequence[int]) -> dict[int, list[np.ndarray]]:
    """Render letters centred on their ink box, one uint8 array per output size.

    The face is drawn at one em size for all its letters, so relative sizes (``o`` vs
    ``O``) survive; a glyph wider or taller than the box is scaled down to fit, never
    clipped.
    """
    big = max(sizes) * RENDER_SCALE
    em = big
    font = ImageFont.truetype(face_path, size=em)
    crops = {cp: _ink_crop(font, chr(cp), em) for cp in letters}
    extents = [max(c.size) for c in crops.values() if c is not None]
    if not extents:
        return {}
    box = BOX_FRACTION * big
    scale = box / float(np.percentile(extents, 95))
    out: dict[int, list[np.ndarray]] = {}
    for cp, crop in crops.items():
        if crop is None:
            continue
        s = min(scale, (big - 2 * MARGIN) / max(crop.size))  # never clip: shrink glyphs that would overflow
        w, h = max(1, round(crop.width * s)), max(1, round(crop.height * s))
        glyph = crop.resize((w, h), Image.LANCZOS)
        canvas = Image.new("L", (big, big), 0)
        canvas.paste(glyph, ((big - w) // 2, (big - h) // 2))
        out[cp] = [np.asarray(canvas.resize((n, n), Image.BOX), dtype=np.uint8) for n in sizes]
    return out


def homoglyph_groups(
    renders: Sequence[dict[int, np.ndarray]], tolerance: float = TOLERANCE, majority: float = 0.5
) -> list[list[int]]:
    """Groups of code points that render identically in most faces covering them.

    ``renders`` holds one ``{code point: image}`` dict per face. Two letters are linked when
    no pixel differs by ``tolerance`` (of 255) or more in more than ``majority`` of the
    faces that have both; a diacritic of a few pixels keeps siblings apart. Groups are the
    connected components.
    """
    import torch

    cps = sorted({cp for r in renders for cp in r})
    index = {cp: i for i, cp in enumerate(cps)}
    n = len(cps)
    same = torch.zeros(n, n)
    both = torch.zeros(n, n)
    for r in renders:
        ids = torch.tensor([index[cp] for cp in r])
        x = torch.from_numpy(np.stack([r[cp] for cp in r]).reshape(len(r), -1).astype(np.float32))
        # screen with L2 (a fast matmul: L-inf < tol implies L2 < tol * sqrt(pixels)), then check L-inf
        near = (torch.cdist(x, x) < tolerance * x.shape[1] ** 0.5).nonzero()
        near = near[near[:, 0] < near[:, 1]]
        linf = (x[near[:, 0]] - x[near[:, 1]]).abs().amax(1)
        hit = near[linf < tolerance]
        same[ids[hit[:, 0]], ids[hit[:, 1]]] += 1.0
        same[ids[hit[:, 1]], ids[hit[:, 0]]] += 1.0
        both[ids[:, None], ids[None, :]] += 1.0
    linked = (same > majority * both) & (both > 0)
    linked.fill_diagonal_(False)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in linked.nonzero().tolist():
        parent[find(i)] = find(j)
    comps: dict[int, list[int]] = {}
    for i in range(n):
        comps.setdefault(find(i), []).append(cps[i])
    return sorted((sorted(c) for c in comps.values() if len(c) > 1), key=lambda c: c[0])


def reference_probes(size: int = 32) -> list[dict[int, np.ndarray]]:
    """Probe renderings in matplotlib's bundled DejaVu faces (always installed with cmkd)."""
    import matplotlib

    root = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    names = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
             "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf"]
    probes = [ord(c) for c in PROBES]
    return [{cp: imgs[0] for cp, imgs in render_face(str(root / n), probes, (size,)).items()} for n in names]


def probe_accuracy(render: dict[int, np.ndarray], references: Sequence[dict[int, np.ndarray]]) -> float:
    """Share of probe letters whose rendering is nearest (cosine) to the same reference letter.

    Symbol, dingbat and keyboard-cap fonts that put other shapes on Latin code points
    score near chance; ordinary faces, italics included, score high.
    """
    ref_x, ref_y = [], []
    for ref in references:
        for cp, img in ref.items():
            ref_x.append(_unit(img))
            ref_y.append(cp)
    ref_m = np.stack(ref_x)
    probes = [cp for cp in map(ord, PROBES) if cp in render]
    if not probes:
        return 0.0
    hits = [ref_y[int(np.argmax(ref_m @ _unit(render[cp])))] == cp for cp in probes]
    return float(np.mean(hits))


def _unit(img: np.ndarray) -> np.ndarray:
    # compare shapes, not sizes: the ink box scaled to 16x16, zero mean, unit norm
    pil = Image.fromarray(img)
    box = pil.getbbox()
    x = np.asarray(pil.crop(box).resize((16, 16), Image.BILINEAR) if box else pil.resize((16, 16)),
                   dtype=np.float32).ravel().copy()
    x -= x.mean()
    return x / (np.linalg.norm(x) + 1e-6)


def duplicate_faces(renders: Sequence[dict[int, np.ndarray]], faces: Sequence[Face],
                    share: float = 0.8) -> set[int]:
    """Indices of faces whose probe renderings mostly equal those of a larger face of the same style.

    Catches clones the family table misses (display cuts, re-releases).
    """
    probes = [ord(c) for c in PROBES]
    drop: set[int] = set()
    order = sorted(range(len(faces)), key=lambda i: (-len(renders[i]), faces[i].family))
    for a_pos, a in enumerate(order):
        if a in drop:
            continue
        for b in order[a_pos + 1:]:
            if b in drop or faces[a].style != faces[b].style:
                continue
            common = [cp for cp in probes if cp in renders[a] and cp in renders[b]]
            same = [_unit(renders[a][cp]) @ _unit(renders[b][cp]) > CLONE_COSINE for cp in common]
            if common and np.mean(same) > share:
                drop.add(b)
    return drop


def _render_job(args: tuple[str, list[int], tuple[int, ...]]) -> dict[int, list[np.ndarray]]:
    return render_face(*args)


def usable_faces(font_dirs: Sequence[str], letters: Sequence[int], sizes: Sequence[int], workers: int
                 ) -> tuple[list[tuple[Face, list[int]]], list[dict[int, list[np.ndarray]]], list[dict]]:
    """Faces that pass every filter, their renderings, and the rejected files with reasons."""
    paths = [p for d in font_dirs if Path(d).exists() for p in Path(d).rglob("*")
             if p.suffix.lower() in (".ttf", ".otf")]
    faces, rejected = select_faces(paths, letters)
    faces = [(Face(**{**asdict(f), **dict(zip(("package", "version"), _debian_package(f.path)))}), c)
             for f, c in faces]
    print(f"{len(faces)} faces kept, {len(rejected)} files rejected")
    with ProcessPoolExecutor(workers) as pool:
        rendered = list(pool.map(_render_job, [(f.path, c, tuple(sizes)) for f, c in faces]))
    smallest = [{cp: imgs[0] for cp, imgs in r.items()} for r in rendered]
    refs = reference_probes(sizes[0])
    drop = {i for i, r in enumerate(smallest) if probe_accuracy(r, refs) < MIN_PROBE_ACCURACY}
    rejected += [{"path": faces[i][0].path, "reason": "Latin probe letters not recognisable (symbol font)"}
                 for i in sorted(drop)]
    dups = duplicate_faces(smallest, [f for f, _ in faces]) - drop
    rejected += [{"path": faces[i][0].path, "reason": "renders like a larger face (clone)"} for i in sorted(dups)]
    keep = [i for i in range(len(faces)) if i not in drop | dups]
    print(f"{len(keep)} faces after the shape and clone checks")
    return [faces[i] for i in keep], [rendered[i] for i in keep], rejected


def choose_renderings(faces: Sequence[tuple[Face, list[int]]], rendered: Sequence[dict[int, list[np.ndarray]]],
                      classes: Sequence[int], max_renderings: int
                      ) -> tuple[dict[int, list[np.ndarray]], np.ndarray, np.ndarray]:
    """At most ``max_renderings`` per class, drawn round-robin over designs and styles; returns the
    images per size, labels and face ids, sorted by class then face."""
    cls_index = {cp: i for i, cp in enumerate(classes)}
    style_rank = {"regular": 0, "italic": 1, "bold": 2, "bold italic": 3}
    seen_design: dict[str, int] = {}
    turn = []
    for f, _ in faces:
        seen_design[f.design] = seen_design.get(f.design, -1) + 1
        turn.append((style_rank[f.style], seen_design[f.design], f.design, f.family))
    taken: dict[int, int] = {}
    n_sizes = len(next(iter(next(iter(rendered)).values())))
    images: dict[int, list[np.ndarray]] = {k: [] for k in range(n_sizes)}
    labels, face_ids = [], []
    for fi in sorted(range(len(faces)), key=lambda i: turn[i]):
        for cp in sorted(rendered[fi]):
            if cp in cls_index and taken.get(cp, 0) < max_renderings:
                taken[cp] = taken.get(cp, 0) + 1
                for k, img in enumerate(rendered[fi][cp]):
                    images[k].append(img)
                labels.append(cls_index[cp])
                face_ids.append(fi)
    order = np.lexsort((np.array(face_ids), np.array(labels)))
    return ({k: [v[i] for i in order] for k, v in images.items()}, np.array(labels, dtype=np.int16)[order],
            np.array(face_ids, dtype=np.int16)[order])


def build(out_dir: Path, sizes: Sequence[int] = (32,), min_renderings: int = 15, max_renderings: int = 48,
          seed: int = 0, font_dirs: Sequence[str] = FONT_DIRS, workers: int = 2) -> dict:
    """Render, filter and write the dataset (arrays, manifest, attribution, descriptions); returns the manifest."""
    letters = letters_of_blocks()
    faces, rendered, rejected = usable_faces(font_dirs, letters, sizes, workers)
    merged = homoglyph_groups([{cp: imgs[0] for cp, imgs in r.items()} for r in rendered])
    dropped = {cp for grp in merged for cp in grp[1:]}  # keep the lowest code point (Latin first)
    counts: dict[int, int] = {}
    for r in rendered:
        for cp in r:
            counts[cp] = counts.get(cp, 0) + 1
    classes = [cp for cp in letters if cp not in dropped and counts.get(cp, 0) >= min_renderings]
    names = [unicodedata.name(chr(cp)) for cp in classes]
    groups = [letter_group(n) for n in names]
    images, labels_arr, faces_arr = choose_renderings(faces, rendered, classes, max_renderings)
    out_dir.mkdir(parents=True, exist_ok=True)
    digests = {}
    for k, n in enumerate(sizes):
        path = out_dir / f"glyphs{n}.npz"
        np.savez_compressed(path, images=np.stack(images[k]), labels=labels_arr, faces=faces_arr)
        digests[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()

    splits = split_by_group(groups, (0.6, 0.2, 0.2), seed)
    per_class = np.bincount(labels_arr, minlength=len(classes))
    manifest = {
        "name": "glyphs",
        "description": "Unicode letters (Latin, Greek, Cyrillic) rendered from real fonts; text = ten generated "
                       "descriptions per image (descriptions.npz), or the Unicode character name with "
                       "data.captions=names.",
        "unicode_version": unicodedata.unidata_version,
        "blocks": {k: [hex(a), hex(b)] for k, (a, b) in BLOCKS.items()},
        "sizes": list(sizes),
        "seed": seed,
        "min_renderings": min_renderings,
        "max_renderings": max_renderings,
        "counts": {
            "classes": len(classes),
            "images": int(len(labels_arr)),
            "faces": len(faces),
            "renderings_per_class": {"min": int(per_class.min()), "median": float(np.median(per_class)),
                                     "max": int(per_class.max())},
            "groups": len(set(groups)),
            "split_classes": {k: len(v) for k, v in splits.items()},
        },
        "classes": [{"codepoint": f"U+{cp:04X}", "char": chr(cp), "name": nm, "group": g}
                    for cp, nm, g in zip(classes, names, groups)],
        "splits": splits,
        "homoglyphs_collapsed": [[f"U+{cp:04X} {unicodedata.name(chr(cp))}" for cp in grp] for grp in merged],
        "faces": [{**asdict(f), "path": f.path, "letters": len(c)} for f, c in faces],
        "rejected_files": rejected,
        "files_sha256": digests,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    _write_attribution(out_dir / "ATTRIBUTION.md", faces, manifest)
    manifest["descriptions"] = write_descriptions(out_dir)
    return manifest


def _write_attribution(path: Path, faces: Sequence[tuple[Face, list[int]]], manifest: dict) -> None:
    lines = [
        "# Glyph dataset: attribution and licences",
        "",
        "The arrays in this folder are renderings of Unicode letters made by",
        "`tools/glyph_builder.py` from the font faces below (Debian packages).",
        "Each face keeps its own licence; the renderings are distributed with this",
        "attribution. Character names come from the Unicode Character Database",
        f"(Unicode {manifest['unicode_version']}, Unicode License v3).",
        "",
        "| family | style | Debian package (version) | licence | copyright |",
        "|---|---|---|---|---|",
    ]
    for f, _ in faces:
        lines.append(f"| {f.family} | {f.style} | {f.package} ({f.version}) | {f.license or 'see package'} "
                     f"| {f.copyright.replace('|', '/')} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parents[1] / "src" / "cmkd" / "data" / "glyphs")
    parser.add_argument("--print-packages", action="store_true", help="print the Debian font packages and exit")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32])
    parser.add_argument("--min-renderings", type=int, default=15)
    parser.add_argument("--max-renderings", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    if args.print_packages:
        print(" ".join(FONT_PACKAGES))
        return
    m = build(args.out, args.sizes, args.min_renderings, args.max_renderings, args.seed, workers=args.workers)
    c = m["counts"]
    print(f"{c['classes']} classes, {c['images']} images from {c['faces']} faces; renderings per class "
          f"{c['renderings_per_class']}; {c['groups']} groups; splits {c['split_classes']}; "
          f"{len(m['homoglyphs_collapsed'])} homoglyph groups collapsed")


if __name__ == "__main__":
    main()
