"""Image+text datasets as a table: one row per image, in CSV (with a header) or JSON Lines.

    path,label,caption,caption_2,group,split
    images/0001.jpg,Black_footed_Albatross,"a large bird with a hooked bill","dark wings",albatross,base

Columns: ``path`` (or ``file_name``, the Hugging Face image-folder name) relative to the table's
folder; ``label`` (the class); captions in ``caption``/``captions``/``text`` and any column whose name
starts with ``caption`` (in JSON Lines a caption cell may be a list); optional ``group`` (fine-grained
group of the class) and ``split`` (base/val/novel of the class). Without ``split``, classes are split
by seeded fractions, whole groups at a time, as for the image-folder format.

The image-folder layout with ``metadata.jsonl`` (``ROOT/<class>/<image>`` and ``ROOT/metadata.jsonl``
rows with ``file_name`` and a caption column) is the same table, its labels read from the folders when
it has no ``label`` column.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cmkd.config import SPLITS
from cmkd.data.cache import Listing, Record
from cmkd.data.splits import split_by_group
from cmkd.data.text import clean_caption
from cmkd.errors import DatasetError

PATH_COLUMNS = ("path", "file_name")
CAPTION_COLUMNS = ("caption", "captions", "text")


def list_table(file: str | Path, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), seed: int = 0,
               label_from_folder: bool = False) -> Listing:
    """A :class:`Listing` of the rows of ``file`` (``.csv`` or ``.jsonl``); every bad row is an error naming
    the file, the line and the fix."""
    file = Path(file)
    if not file.is_file():
        raise DatasetError(f"{file} does not exist or is not a file; give a .csv or .jsonl table")
    root = file.parent
    records: list[Record] = []
    groups: dict[str, str] = {}
    splits: dict[str, str] = {}
    uncaptioned: list[str] = []
    seen: dict[Path, int] = {}
    for line, row in _rows(file):
        where = f"{file}:{line}"
        path_col = next((c for c in PATH_COLUMNS if c in row), None)
        if path_col is None or not isinstance(row[path_col], str) or not row[path_col].strip():
            raise DatasetError(f"{where}: no image path; give each row a 'path' (or 'file_name') column")
        rel = Path(row[path_col].strip())
        path = rel if rel.is_absolute() else root / rel
        if not path.is_file():
            raise DatasetError(f"{where}: image {path} does not exist; fix the path (relative to {root}) or drop "
                               "the row")
        if path in seen:
            raise DatasetError(f"{where}: image {rel} is listed again (first on line {seen[path]}); list each "
                               "image once, with all its captions")
        seen[path] = line
        label = _label(row, rel, where, label_from_folder)
        captions = _captions(row, where)
        if not captions:
            uncaptioned.append(str(rel))
        for key, store in (("group", groups), ("split", splits)):
            value = row.get(key)
            if value in (None, ""):
                continue
            value = str(value).strip()
            if key == "split" and value not in SPLITS:
                raise DatasetError(f"{where}: split {value!r}; use one of {', '.join(SPLITS)}")
            if store.setdefault(label, value) != value:
                raise DatasetError(f"{where}: class {label!r} has {key} {value!r} here and {store[label]!r} on an "
                                   f"earlier row; a class has one {key}")
        records.append(Record(path, label, captions))
    if not records:
        raise DatasetError(f"{file} has no rows; give one row per image")
    classes = sorted({r.class_name for r in records})
    warnings = []
    if uncaptioned:
        warnings.append(f"{len(uncaptioned)} image(s) without captions (text modality unavailable for them): "
                        f"{uncaptioned[:5]}")
    if splits and len(splits) != len(classes):
        missing = sorted(set(classes) - set(splits))
        raise DatasetError(f"{file}: the 'split' column is empty for every row of the classes {missing[:5]}; give "
                           "every class a split, or leave the column out to split by fractions")
    group_of = {c: groups.get(c, c) for c in classes}
    if splits:
        by_split = {s: [c for c in classes if splits[c] == s] for s in SPLITS}
    else:
        idx = split_by_group([group_of[c] for c in classes], fractions, seed)
        by_split = {k: [classes[i] for i in v] for k, v in idx.items()}
    return Listing(name=root.name if label_from_folder else file.stem, format="table", records=records,
                   classes=classes, groups=group_of, splits=by_split, extra_inputs=[file], warnings=warnings,
                   options={"fractions": list(fractions), "seed": seed, "table": file.name})


def _rows(file: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` of a CSV file with a header or of a JSON Lines file (blank lines skipped)."""
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{file} is not UTF-8 ({err}); save it as UTF-8") from None
    if file.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames:
            raise DatasetError(f"{file} has no header row; the first line names the columns (path,label,caption)")
        for row in reader:
            if None in row:
                raise DatasetError(f"{file}:{reader.line_num}: more cells than the header's "
                                   f"{len(reader.fieldnames)} columns; quote cells that hold commas")
            yield reader.line_num, row
    elif file.suffix.lower() in (".jsonl", ".json"):
        for line, raw in enumerate(text.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{file}:{line}: not valid JSON ({err.msg}); one JSON object per line") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{file}:{line}: a row must be a JSON object, got {type(row).__name__}")
            yield line, row
    else:
        raise DatasetError(f"{file}: unknown table type '{file.suffix}'; use .csv (with a header) or .jsonl")


def _label(row: dict[str, Any], rel: Path, where: str, from_folder: bool) -> str:
    value = row.get("label")
    if value in (None, "") and from_folder:
        if len(rel.parts) < 2:
            raise DatasetError(f"{where}: {rel} is not inside a class folder and the row has no 'label'; move it "
                               "to ROOT/<class>/ or add a label column")
        return rel.parts[-2]
    if value in (None, "") or isinstance(value, (dict, list, bool)):
        raise DatasetError(f"{where}: no class label; give each row a 'label' (a name or a number)")
    return str(value).strip()


def _captions(row: dict[str, Any], where: str) -> tuple[str, ...]:
    out: list[str] = []
    for key in row:
        if key not in CAPTION_COLUMNS and not key.startswith("caption"):
            continue
        cell = row[key]
        cells = cell if isinstance(cell, list) else [cell]
        for c in cells:
            if c is None:
                continue
            if not isinstance(c, str):
                raise DatasetError(f"{where}: column {key!r} holds {type(c).__name__}; captions are text")
            cleaned = clean_caption(c)
            if cleaned:
                out.append(cleaned)
    return tuple(out)
