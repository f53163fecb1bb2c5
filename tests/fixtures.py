"""Generators of tiny datasets in the exact on-disk layouts of the real ones, pitfalls included."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

_CLASSES_TXT = Path(__file__).parent / "data" / "cub_classes.txt"  # CUB-200-2011's real classes.txt
CUB_CLASSES = [line.split()[1] for line in _CLASSES_TXT.read_text().splitlines()]


def _jpeg(path: Path, value: int, size: int = 24, box: tuple[int, int, int, int] | None = None) -> None:
    arr = np.full((size, size, 3), value % 256, np.uint8)
    arr[..., 1] = (value * 7) % 256
    if box is not None:
        x, y, w, h = box
        arr[y:y + h, x:x + w] = (250, 10, 10)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, "JPEG", quality=95)


def make_cub(root: Path, per_class: int = 3, missing_caption: bool = True) -> dict:
    """CUB_200_2011/ + text_c10/ with 200 classes; returns what was planted."""
    cub = root / "CUB_200_2011"
    text = root / "text_c10"
    images, labels, boxes, split = [], [], [], []
    image_id = 0
    planted = {}
    for ci, folder in enumerate(CUB_CLASSES, 1):
        species = folder.split(".", 1)[1]
        for k in range(per_class):
            image_id += 1
            # file names capitalise differently from their folder, as in the real dataset
            stem = f"{species.title()}_{k:04d}_{image_id}"
            rel = f"{folder}/{stem}.jpg"
            _jpeg(cub / "images" / rel, image_id, box=(4, 4, 8, 8))
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {ci}")
            boxes.append(f"{image_id} 4.0 4.0 8.0 8.0")
            split.append(f"{image_id} {k % 2}")
            caps = f"this bird is a {species.replace('_', ' ').lower()}\n\nit has a sm\ufffdall beak\n" + \
                   "\n".join(f"caption {j} of {stem.lower()}" for j in range(8)) + "\n"
            (text / folder).mkdir(parents=True, exist_ok=True)
            (text / folder / f"{stem}.txt").write_text(caps)
    first = images[0].split()[1]
    planted["first_image"] = cub / "images" / first
    if missing_caption:
        missing = images[5].split()[1]
        (text / missing.split("/")[0] / (Path(missing).stem + ".txt")).unlink()
        planted["uncaptioned"] = missing
    # an id in images.txt with no class label
    images.append(f"{image_id + 1} {CUB_CLASSES[0]}/Orphan_0001.jpg")
    _jpeg(cub / "images" / CUB_CLASSES[0] / "Orphan_0001.jpg", 1)
    planted["orphan_id"] = str(image_id + 1)
    cub.mkdir(parents=True, exist_ok=True)
    (cub / "images.txt").write_text("\n".join(images) + "\n")
    (cub / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (cub / "classes.txt").write_text("\n".join(f"{i} {c}" for i, c in enumerate(CUB_CLASSES, 1)) + "\n")
    (cub / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    (cub / "train_test_split.txt").write_text("\n".join(split) + "\n")
    return planted


def corrupt(path: Path, how: str) -> None:
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif how == "zero":
        path.write_bytes(b"")


def make_folder(root: Path, classes: int = 12, per_class: int = 4, splits: bool = True, groups: bool = True) -> None:
    names = [f"class {c:02d}" for c in range(classes)]
    for ci, name in enumerate(names):
        for k in range(per_class):
            img = root / name / f"img{k}.png"
            img.parent.mkdir(parents=True, exist_ok=True)
            arr = np.full((20, 20, 3), (ci * 20) % 256, np.uint8)
            arr[k:k + 5, k:k + 5] = 255
            Image.fromarray(arr).save(img)
            if k == 0:
                img.with_suffix(".txt").write_text(f"own caption of {name}\nsecond line\n")
        (root / name / "captions.txt").write_text(f"a picture of {name}\n")
    if splits:
        a, b = classes // 2, classes // 2 + classes // 4
        (root / "splits.json").write_text(json.dumps({"base": names[:a], "val": names[a:b], "novel": names[b:]}))
    if groups:
        (root / "groups.json").write_text(json.dumps({n: f"g{i // 3}" for i, n in enumerate(names)}))


def make_flowers(root: Path, classes: int = 12, per_class: int = 3) -> None:
    from scipy.io import savemat

    labels = np.repeat(np.arange(1, classes + 1), per_class)
    for i, lab in enumerate(labels, 1):
        _jpeg(root / "jpg" / f"image_{i:05d}.jpg", i * 3)
        cap = root / "text_c10" / f"class_{lab:05d}" / f"image_{i:05d}.txt"
        cap.parent.mkdir(parents=True, exist_ok=True)
        cap.write_text(f"a flower of kind {lab}\nwith petals\n")
    savemat(str(root / "imagelabels.mat"), {"labels": labels[None, :].astype(np.uint8)})
    n = len(labels)
    savemat(str(root / "setid.mat"), {"trnid": np.arange(1, n // 2)[None], "valid": np.arange(n // 2, n)[None],
                                      "tstid": np.arange(1, 3)[None]})
