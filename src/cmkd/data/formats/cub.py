"""CUB-200-2011 (Wah et al. 2011) with the captions of Reed et al. 2016.

    CUB_200_2011/images/NNN.Class_Name/<Image_Name>.jpg   (file names differ in case from folders)
    CUB_200_2011/images.txt               <image id> <relative path>
    CUB_200_2011/image_class_labels.txt   <image id> <class id 1..200>
    CUB_200_2011/classes.txt              <class id> <NNN.Class_Name>
    CUB_200_2011/bounding_boxes.txt       <image id> <x> <y> <width> <height>   (float pixels)
    text_c10/<NNN.Class_Name>/<image stem>.txt   ten lower-case captions per image (Reed et al.)

Split: the CloserLook rule (Chen et al., ICLR 2019) by default — sort the class folders;
index i % 2 == 0 base, i % 4 == 1 val, i % 4 == 3 novel (100/50/50) — or a CSV/JSON file.
Fine-grained group: the bird type, the last word of the class name (Warbler, Sparrow, ...).
"""

from __future__ import annotations

from pathlib import Path

from cmkd.data.cache import Listing, Record
from cmkd.data.images import read_caption_file
from cmkd.data.splits import read_split_file
from cmkd.errors import DatasetError


def closerlook_split(class_folders: list[str]) -> dict[str, list[str]]:
    """Chen et al. 2019's rule over the sorted class folder names."""
    ordered = sorted(class_folders)
    return {"base": [c for i, c in enumerate(ordered) if i % 2 == 0],
            "val": [c for i, c in enumerate(ordered) if i % 4 == 1],
            "novel": [c for i, c in enumerate(ordered) if i % 4 == 3]}


def bird_type(class_folder: str) -> str:
    """'026.Bronzed_Cowbird' -> 'Cowbird'."""
    return class_folder.split(".", 1)[-1].split("_")[-1]


def _table(path: Path, columns: int) -> dict[str, list[str]]:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; is {path.parent} a CUB_200_2011 folder?")
    rows = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != columns:
            raise DatasetError(f"{path}:{n}: expected {columns} fields, got {line!r}")
        rows[parts[0]] = parts[1:]
    return rows


def list_cub(root: str | Path, captions: str | Path | None = None, crop: bool = False,
             split_file: str | Path | None = None, skip_bad: bool = False) -> Listing:
    root = Path(root)
    if (root / "CUB_200_2011").is_dir():
        root = root / "CUB_200_2011"
    if not root.is_dir():
        raise FileNotFoundError(f"{root} does not exist; point --root at the CUB_200_2011 folder")
    classes_by_id = {k: v[0] for k, v in _table(root / "classes.txt", 2).items()}
    images = _table(root / "images.txt", 2)
    labels = _table(root / "image_class_labels.txt", 2)
    boxes = _table(root / "bounding_boxes.txt", 5) if crop else {}
    caption_root = Path(captions) if captions else None
    if caption_root is not None and not caption_root.is_dir():
        raise FileNotFoundError(f"caption folder {caption_root} does not exist (expected text_c10/<class>/<image>.txt)")
    records, warnings, missing_caps, extra = [], [], [], []
    for image_id, (rel,) in images.items():
        if image_id not in labels:
            msg = f"image id {image_id} ({rel}) is in images.txt but not in image_class_labels.txt"
            if not skip_bad:
                raise DatasetError(f"{root / 'image_class_labels.txt'}: {msg}; fix the file or use --skip-bad")
            warnings.append(msg)
            continue
        class_folder = classes_by_id.get(labels[image_id][0])
        if class_folder is None:
            raise DatasetError(f"{root / 'image_class_labels.txt'}: image {image_id} has unknown class "
                             f"{labels[image_id][0]} (not in classes.txt)")
        if rel.split("/")[0] != class_folder:
            raise DatasetError(f"{root / 'images.txt'}: {rel} lies outside its class folder {class_folder}")
        caps: tuple[str, ...] = ()
        if caption_root is not None:
            txt = caption_root / class_folder / (Path(rel).stem + ".txt")
            if txt.exists():
                caps = tuple(read_caption_file(txt))
                extra.append(txt)
            if not caps:
                missing_caps.append(rel)
        box = None
        if crop:
            if image_id not in boxes:
                raise DatasetError(f"{root / 'bounding_boxes.txt'} has no box for image {image_id} ({rel})")
            x, y, w, h = (float(v) for v in boxes[image_id])
            box = (x, y, w, h)
        records.append(Record(root / "images" / rel, class_folder, caps, box))
    if missing_caps:
        warnings.append(f"{len(missing_caps)} image(s) without captions: {missing_caps[:10]}")
    classes = sorted({r.class_name for r in records})
    splits = read_split_file(split_file) if split_file else closerlook_split(classes)
    extra += [root / n for n in ("classes.txt", "images.txt", "image_class_labels.txt", "bounding_boxes.txt")]
    return Listing(name="cub", format="cub", records=records, classes=classes,
                   groups={c: bird_type(c) for c in classes}, splits=splits, extra_inputs=extra,
                   warnings=warnings, options={"crop": crop, "captions": str(caption_root),
                                               "split_file": str(split_file) if split_file else "closerlook"})
