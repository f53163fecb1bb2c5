"""Oxford-102 flowers (Nilsback & Zisserman 2008) with the captions of Reed et al. 2016.

    ROOT/jpg/image_NNNNN.jpg
    ROOT/imagelabels.mat     'labels': 1 x 8189, classes 1..102
    ROOT/setid.mat           'trnid', 'valid', 'tstid': image-level splits (recorded, not used:
                             few-shot learning splits classes, not images)
    CAPTIONS/class_NNNNN/image_NNNNN.txt   ten captions per image

Reading ``.mat`` files needs SciPy (``pip install 'cmkd[mat]'``). Classes are split by seeded
fractions unless a split file is given. The dataset names no classes, so each class is its own
group (no fine-grained episodes).
"""

from __future__ import annotations

from pathlib import Path

from cmkd.data.cache import Listing, Record
from cmkd.data.images import read_caption_file
from cmkd.data.splits import read_split_file, split_by_group
from cmkd.errors import DatasetError


def _loadmat(path: Path) -> dict:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ImportError("reading Oxford-102's .mat files needs SciPy: pip install 'cmkd[mat]'") from None
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; is {path.parent} the Oxford-102 folder?")
    try:
        return loadmat(str(path))
    except Exception as err:  # scipy raises several unrelated types for a damaged file
        raise DatasetError(f"{path} is not a readable MATLAB file ({err})") from None


def list_flowers(root: str | Path, captions: str | Path | None = None, split_file: str | Path | None = None,
                 fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), seed: int = 0) -> Listing:
    root = Path(root)
    if not (root / "jpg").is_dir():
        raise FileNotFoundError(f"{root / 'jpg'} does not exist; point --root at the folder holding jpg/ and "
                                "imagelabels.mat")
    labels = _loadmat(root / "imagelabels.mat").get("labels")
    if labels is None:
        raise DatasetError(f"{root / 'imagelabels.mat'} has no 'labels' array")
    labels = [int(v) for v in labels.ravel()]
    setid = _loadmat(root / "setid.mat") if (root / "setid.mat").exists() else {}
    caption_root = Path(captions) if captions else None
    records, missing, extra, warnings = [], [], [], []
    for i, lab in enumerate(labels, 1):
        img = root / "jpg" / f"image_{i:05d}.jpg"
        if not img.exists():
            warnings.append(f"{img} is listed in imagelabels.mat but missing")
            continue
        cls = f"class_{lab:05d}"
        caps: tuple[str, ...] = ()
        if caption_root is not None:
            txt = caption_root / cls / f"image_{i:05d}.txt"
            if txt.exists():
                caps = tuple(read_caption_file(txt))
                extra.append(txt)
            if not caps:
                missing.append(img.name)
        records.append(Record(img, cls, caps))
    if missing:
        warnings.append(f"{len(missing)} image(s) without captions: {missing[:10]}")
    classes = sorted({r.class_name for r in records})
    if split_file:
        splits = read_split_file(split_file)
    else:
        idx = split_by_group(classes, fractions, seed)
        splits = {k: [classes[i] for i in v] for k, v in idx.items()}
    sizes = {k: int(v.size) for k, v in setid.items() if k in ("trnid", "valid", "tstid")}
    return Listing(name="flowers", format="flowers", records=records, classes=classes,
                   groups={c: c for c in classes}, splits=splits,
                   extra_inputs=[*extra, root / "imagelabels.mat", root / "setid.mat"], warnings=warnings,
                   options={"captions": str(caption_root), "image_level_setid": sizes,
                            "split": str(split_file) if split_file else {"fractions": list(fractions), "seed": seed}})
