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
from typing import Any

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
            with Image.open(path) as opened:
                _check_resize_budget(path, opened.size, box, size)
                opened.load()
                img = ImageOps.exif_transpose(opened)
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
    return fit_image(_to_8bit(img, path), channels, size)


def fit_image(img: Image.Image, channels: int, size: int) -> np.ndarray:
    """A decoded image as uint8 ``[channels, size, size]``: alpha over black, shorter side resized, centre crop."""
    img = _flatten_alpha(img)
    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1).copy()


ImageLike = str | Path | Image.Image | np.ndarray | Any  # Any: a torch.Tensor (torch is not imported here)


def as_image(image: ImageLike, channels: int, size: int) -> np.ndarray:
    """Any one image as uint8 ``[channels, size, size]``, converted and resized like an image file.

    Accepted: a path; a PIL image; a numpy array or torch tensor laid out ``H x W`` (grey), ``H x W x C`` or
    ``C x H x W`` (C = 1, 3 or 4), holding uint8 values 0-255 or floats in [0, 1]. Anything else, or a layout
    that reads both ways (e.g. 3 x 8 x 3), is refused with a message saying what to pass."""
    if isinstance(image, str | Path):
        return load_image(image, channels, size)
    if isinstance(image, Image.Image):
        _check_resize_budget(Path("the PIL image"), image.size, None, size)
        return fit_image(_to_8bit(image, Path("the PIL image")), channels, size)
    if hasattr(image, "detach") and hasattr(image, "numpy"):  # a torch tensor
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise ImageError(f"an image must be a path, a PIL image, a numpy array or a torch tensor, got "
                         f"{type(image).__name__}")
    arr = _to_hwc(image)
    if arr.dtype != np.uint8:
        if arr.dtype.kind != "f":
            raise ImageError(f"image arrays must hold uint8 (0-255) or floats in [0, 1], got {arr.dtype}; "
                             "convert with .astype(np.uint8) or divide by 255")
        if not np.isfinite(arr).all():
            raise ImageError("a float image holds NaN or infinite values; it is not a usable image")
        if arr.min() < 0 or arr.max() > 1:
            raise ImageError(f"a float image must lie in [0, 1], got values from {arr.min():g} to {arr.max():g}; "
                             "divide 0-255 values by 255 or pass uint8")
        arr = np.rint(arr * 255).astype(np.uint8)
    _check_resize_budget(Path("the image array"), (arr.shape[1], arr.shape[0]), None, size)
    if arr.shape[2] == channels and arr.shape[:2] == (size, size):
        return np.ascontiguousarray(arr.transpose(2, 0, 1))
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[arr.shape[2]]
    return fit_image(Image.fromarray(arr[..., 0] if mode == "L" else arr, mode), channels, size)


def _to_hwc(arr: np.ndarray) -> np.ndarray:
    """``H x W``, ``H x W x C`` or ``C x H x W`` -> ``H x W x C``; an ambiguous or other shape is refused."""
    if arr.ndim == 2:
        return arr[..., None]
    colour = (1, 3, 4)
    if arr.ndim == 3:
        last, first = arr.shape[2] in colour, arr.shape[0] in colour
        if last and not first:
            return arr
        if first and not last:
            return arr.transpose(1, 2, 0)
        if last and first:
            raise ImageError(f"image shape {arr.shape} reads both as H x W x C and as C x H x W; pass it "
                             "channels-last (H x W x C) as a PIL image, or resize it first")
    raise ImageError(f"image shape {arr.shape} is not H x W, H x W x C or C x H x W with C = 1, 3 or 4; "
                     "one image at a time (a batch is a list of images)")


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
