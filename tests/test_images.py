"""Bad and unusual image files: each is converted as documented or refused naming the file."""

import io

import numpy as np
import pytest
from PIL import Image

from cmkd.data.images import load_image, read_caption_file
from cmkd.errors import ImageError


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


@pytest.fixture
def rgb(tmp_path):
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[10:30, 20:40] = (255, 128, 0)
    return _save(Image.fromarray(arr), tmp_path / "ok.png")


def test_rgb_png_to_grey_and_rgb(rgb):
    g = load_image(rgb, 1, 32)
    c = load_image(rgb, 3, 32)
    assert g.shape == (1, 32, 32) and c.shape == (3, 32, 32) and g.dtype == np.uint8
    assert c[0].max() > 200 and c[2].max() < 30  # orange stays orange


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P", "CMYK", "I;16", "I"])
def test_modes_are_converted(tmp_path, mode):
    base = Image.new("L", (20, 20), 0)
    base.paste(255, (5, 5, 15, 15))
    if mode == "I;16":
        img = Image.fromarray(np.asarray(base, np.uint16) * 257)  # Pillow infers I;16
    elif mode == "I":
        img = Image.fromarray(np.asarray(base, np.int32) * 257)  # a 16-bit scan as Pillow opens it
    else:
        img = base.convert(mode)
    suffix = ".jpg" if mode == "CMYK" else ".tif" if mode == "I" else ".png"
    path = _save(img, tmp_path / f"x{suffix}")
    out = load_image(path, 1, 20)
    assert out.shape == (1, 20, 20)
    assert out[0, 10, 10] > 200 and out[0, 1, 1] < 40, f"{mode}: the square must stay bright on dark"


def test_transparency_is_composited_over_black(tmp_path):
    img = Image.new("RGBA", (10, 10), (255, 255, 255, 0))
    img.putpixel((5, 5), (255, 255, 255, 255))
    out = load_image(_save(img, tmp_path / "a.png"), 1, 10)
    assert out[0, 0, 0] == 0 and out[0, 5, 5] == 255


@pytest.mark.parametrize("make,expect", [
    (lambda p: p.write_bytes(b""), "is empty"),
    (lambda p: p.write_text("not an image at all"), "is not an image Pillow can read"),
    (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4), "is not an image|truncated or corrupt"),
])
def test_broken_files_are_named(tmp_path, make, expect):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(ImageError, match=expect) as err:
        load_image(path, 3, 32)
    assert str(path) in str(err.value)


def test_truncated_jpeg(tmp_path, rgb):
    buf = io.BytesIO()
    Image.open(rgb).convert("RGB").resize((200, 200)).save(buf, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt") as err:
        load_image(path, 3, 32)
    assert "cut.jpg" in str(err.value)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = _save(Image.new("L", (300, 300)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # Pillow's limit, made small for the test
    with pytest.raises(ImageError, match="too large to decode safely") as err:
        load_image(path, 1, 32)
    assert "big.png" in str(err.value)


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "nope.png", 1, 32)
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path, 1, 32)


def test_captions_are_cleaned_and_non_utf8_is_survivable(tmp_path):
    p = tmp_path / "c.txt"
    p.write_bytes("a bird with a red\ufffd crown\n\n   \nsmall  bird\n".encode())
    assert read_caption_file(p) == ["a bird with a red crown", "small bird"]
    q = tmp_path / "latin1.txt"
    q.write_bytes("cr\xe8me br\xfbl\xe9e au caf\xe9\n".encode("latin-1"))
    with pytest.warns(UserWarning, match="not UTF-8; read it as Windows-1252.*iconv -f cp1252 -t utf-8"):
        assert read_caption_file(q) == ["cr\xe8me br\xfbl\xe9e au caf\xe9"]
