"""Any image folder with captions (the generic format).

    ROOT/<class name>/<image>.{jpg,jpeg,png,webp,bmp,gif,tif,tiff}
    ROOT/<class name>/<image stem>.txt     captions of one image, one per line (optional)
    ROOT/<class name>/captions.txt         captions for every image of the class without its own file
    ROOT/splits.json                       {"base": [...], "val": [...], "novel": [...]} (optional)
    ROOT/groups.json                       {"<class name>": "<group>"} (optional)

Without ``splits.json`` classes are split by seeded fractions, whole groups at a time.
"""

from __future__ import annotations

from pathlib import Path

from cmkd.data.cache import Listing, Record
from cmkd.data.images import IMAGE_SUFFIXES, read_caption_file
from cmkd.data.splits import check_groups, read_json_object, read_split_file, split_by_group
from cmkd.errors import DatasetError, ImageError


def class_folders(root: str | Path) -> list[Path]:
    """The class sub-folders of ``root`` (hidden ones skipped), refusing names equal up to case."""
    root = Path(root)
    if not root.is_dir():
        raise ImageError(f"{root} does not exist or is not a directory; expected {root}/<class name>/<image>")
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    folded: dict[str, str] = {}
    for d in dirs:
        if d.name.casefold() in folded:
            raise ImageError(f"class folders '{folded[d.name.casefold()]}' and '{d.name}' in {root} differ only "
                             "in case; merge or rename one")
        folded[d.name.casefold()] = d.name
    return dirs


def list_folder(root: str | Path, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
                seed: int = 0) -> Listing:
    root = Path(root)
    class_dirs = class_folders(root)
    records, extra, warnings = [], [], []
    uncaptioned = []
    for d in class_dirs:
        images = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                        and not f.name.startswith("."))
        if not images:
            raise ImageError(f"class folder {d} has no images ({', '.join(IMAGE_SUFFIXES)}); add some or remove it")
        others = sorted(f.name for f in d.iterdir() if f.is_file() and not f.name.startswith(".")
                        and f.suffix.lower() not in (*IMAGE_SUFFIXES, ".txt"))
        if others:
            warnings.append(f"{d}: ignored non-image files {others[:5]}")
        class_caps_file = d / "captions.txt"
        class_caps = tuple(read_caption_file(class_caps_file)) if class_caps_file.exists() else ()
        if class_caps_file.exists():
            extra.append(class_caps_file)
        for img in images:
            own = img.with_suffix(".txt")
            caps = tuple(read_caption_file(own)) if own.exists() else ()
            if own.exists():
                extra.append(own)
            caps = caps or class_caps
            if not caps:
                uncaptioned.append(str(img.relative_to(root)))
            records.append(Record(img, d.name, caps))
    if not records:
        raise ImageError(f"{root} holds no class folders with images")
    if uncaptioned:
        warnings.append(f"{len(uncaptioned)} image(s) without captions (text modality unavailable for them): "
                        f"{uncaptioned[:5]}")
    classes = [d.name for d in class_dirs]
    groups = {c: c for c in classes}
    if (root / "groups.json").exists():
        given = check_groups(read_json_object(root / "groups.json", "class names to groups"), root / "groups.json")
        unknown = sorted(set(given) - set(classes))
        if unknown:
            raise DatasetError(f"{root / 'groups.json'} names classes without a folder: {unknown[:5]}")
        groups.update(given)
        extra.append(root / "groups.json")
    if (root / "splits.json").exists():
        splits = read_split_file(root / "splits.json")
        extra.append(root / "splits.json")
    else:
        idx = split_by_group([groups[c] for c in classes], fractions, seed)
        splits = {k: [classes[i] for i in v] for k, v in idx.items()}
    return Listing(name=root.name, format="folder", records=records, classes=classes, groups=groups,
                   splits=splits, extra_inputs=extra, warnings=warnings,
                   options={"fractions": list(fractions), "seed": seed})
