"""Reading user images safely: every failure is an :class:`ImageError` naming the file and the fix.

Conversions (documented, never silent failures): EXIF orientation is applied; 16-bit and
32-bit grey images are scaled to 8 bits; CMYK, palette and grey images are converted to the
model's channels; transparency is composited over black (the glyph convention: light ink on a
dark ground). Images are resized so the shorter side fits, then centre-cropped square.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cmkd.errors import ImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: The largest image the resize may produce (before the centre crop): a 1 x 3,000,000 PNG of a few KB
#: would otherwise become 32 x 96,000,000 pixels. Checked from the header, before anything is decoded.
RESIZE_BUDGET = 16_000_000




def _to_8bit(img: Image.Image, path: Path) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ImageError(f"{path} holds NaN or infinite pixel values; it is not a usable image")
        top = arr.max()
        scale = 255.0 / (65535.0 if img.mode.startswith("I;16") or top > 255 else max(top, 1.0))
        return Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L")
    return img


def _flatten_alpha(img: Image.Image) -> Image.Image:
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode in ("RGB", "L") and "transparency" in img.info):
        ground = Image.new("RGBA", img.size, (0, 0, 0, 255))  # opaque black: alpha a keeps a share a of the ink
        img = Image.alpha_composite(ground, img.convert("RGBA")).convert("RGB")
    return img


def _check_resize_budget(path: Path, wh: tuple[int, int], box: tuple[float, float, float, float] | None,
                         size: int) -> None:
    w, h = (max(1, min(wh[0], int(box[2]))), max(1, min(wh[1], int(box[3])))) if box is not None else wh
    scale = size / max(1, min(w, h))
    out_w, out_h = max(size, round(w * scale)), max(size, round(h * scale))
    if out_w * out_h > RESIZE_BUDGET:
        raise ImageError(f"{path} is {w}x{h} pixels: fitting its shorter side to {size} would make a {out_w}x{out_h} "
                         f"image ({out_w * out_h / 1e6:.0f} Mpx, over the {RESIZE_BUDGET / 1e6:.0f} Mpx budget); "
                         "crop it to a less extreme aspect ratio, or leave it out (--skip-bad)")


def load_image(path: str | Path, channels: int, size: int,
               box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """``path`` as uint8 ``[channels, size, size]``; raises :class:`ImageError` on any bad input.

    ``box`` = (x, y, width, height) in pixels crops the image first (CUB's bounding boxes).
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path} does not exist; check the path")
    if path.is_dir():
        raise ImageError(f"{path} is a directory, not an image file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path} is empty (0 bytes); replace or remove it")
    if not os.access(path, os.R_OK):
        raise ImageError(f"{path} cannot be read (permission denied); fix its permissions (chmod a+r)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                _check_resize_budget(path, img.size, box, size)
                img.load()
                img = ImageOps.exif_transpose(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"{path} is too large to decode safely ({err}); downscale it first") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path} is not an image Pillow can read (expected one of "
                         f"{', '.join(IMAGE_SUFFIXES)}); remove it or convert it") from None
    except PermissionError:
        raise ImageError(f"{path} cannot be read (permission denied); fix its permissions (chmod a+r)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{path} is truncated or corrupt ({err}); replace or remove it") from None
    if box is not None:
        x, y, w, h = box
        img = img.crop((max(0, int(x)), max(0, int(y)), min(img.width, int(np.ceil(x + w))),
                        min(img.height, int(np.ceil(y + h)))))
    img = _flatten_alpha(_to_8bit(img, path))
    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1).copy()


def read_caption_file(path: Path) -> list[str]:
    """Non-empty lines of a caption file (UTF-8, or else Windows-1252 / Latin-1 with a warning that
    says how to convert it), cleaned by :func:`cmkd.data.text.clean_caption`."""
    from cmkd.data.text import clean_caption

    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        try:
            text, used = raw.decode("cp1252"), "Windows-1252"
        except UnicodeDecodeError:
            text, used = raw.decode("latin-1"), "Latin-1"
        warnings.warn(f"{path} is not UTF-8; read it as {used}. Convert it to silence this: "
                      f"iconv -f {'cp1252' if used == 'Windows-1252' else 'latin1'} -t utf-8", stacklevel=2)
    lines = [clean_caption(line) for line in text.splitlines()]
    return [line for line in lines if line]
