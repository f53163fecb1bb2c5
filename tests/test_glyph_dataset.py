"""The shipped glyph dataset is what its manifest says."""

import hashlib

import numpy as np
import pytest
import torch

from cmkd.config import load_config
from cmkd.data.augment import low_resolution
from cmkd.data.formats.glyphs import glyph_dir, glyph_manifest, load_glyphs
from cmkd.data.registry import load_dataset
from cmkd.errors import ConfigError


def test_counts_match_manifest_and_issue_floor(glyphs):
    m = glyph_manifest()
    assert glyphs.num_classes == m["counts"]["classes"] >= 1000
    assert len(glyphs.labels) == m["counts"]["images"]
    per_class = np.bincount(glyphs.labels.numpy(), minlength=glyphs.num_classes)
    assert per_class.min() >= 15
    assert glyphs.images.shape[1:] == (1, 32, 32)


def test_files_match_their_checksums():
    m = glyph_manifest()
    for name, digest in m["files_sha256"].items():
        assert hashlib.sha256((glyph_dir() / name).read_bytes()).hexdigest() == digest


def test_names_mode_gives_the_unicode_name():
    import unicodedata

    named = load_glyphs(32, "names")
    for c in (0, 100, 500):
        i = int(np.flatnonzero(named.labels.numpy() == c)[0])
        char = named.class_names[c].split(" ", 1)[1]
        assert named.captions[i] == (unicodedata.name(char),)


def test_default_text_is_ten_descriptions_per_image(glyphs):
    m = glyph_manifest()
    assert m["descriptions"]["per_image"] == 10
    assert all(len(c) == 10 for c in glyphs.captions)
    labels = glyphs.labels.numpy()
    for c in (0, 100, 500):
        idx = np.flatnonzero(labels == c)
        assert len({caps for caps in (glyphs.captions[i] for i in idx)}) > 1, "descriptions differ per image"


def test_glyphs_are_centred_and_unclipped(glyphs):
    imgs = glyphs.images[:, 0].numpy()
    assert imgs[:, 0, :].max() < 64 and imgs[:, -1, :].max() < 64
    assert imgs[:, :, 0].max() < 64 and imgs[:, :, -1].max() < 64


def test_no_two_classes_share_all_renderings(glyphs):
    # homoglyphs were collapsed: the mean images of distinct classes differ
    labels = glyphs.labels.numpy()
    means = np.stack([glyphs.images[labels == c, 0].float().mean(0).numpy().ravel()
                      for c in range(glyphs.num_classes)])
    d = np.abs(means[:, None, :200] - means[None, :, :200]).max(-1)  # cheap screen on the first rows
    close = np.argwhere(np.triu(d < 1e-6, 1))
    for a, b in close:
        assert np.abs(means[a] - means[b]).max() > 1.0, (glyphs.class_names[a], glyphs.class_names[b])


def test_low_res_averages_marks_away_and_keeps_shapes():
    checker = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    checker[..., ::2, ::2] = checker[..., 1::2, 1::2] = 255  # one-pixel marks
    ramp = torch.arange(32, dtype=torch.uint8).mul(8).expand(1, 1, 32, 32)  # smooth: survives
    out = low_resolution(torch.cat([checker, ramp]), 16)
    assert out.shape == (2, 1, 32, 32) and out.dtype == torch.uint8
    assert out[0].unique().tolist() == [128]  # 127.5, rounded
    assert (out[1].int() - ramp[0].int()).abs().max() <= 4


def test_the_low_res_view_applies_to_every_image_and_is_checked(glyphs):
    seen = load_dataset(load_config(overrides=["data.low_res=8"]).data)
    assert seen.meta["low_res"] == 8 and torch.equal(seen.labels, glyphs.labels)
    assert torch.equal(seen.images[:50], low_resolution(glyphs.images[:50], 8))
    assert not torch.equal(seen.images[:50], glyphs.images[:50])
    with pytest.raises(ConfigError, match=r"data.low_res=32 must be below data.image_size=32"):
        load_dataset(load_config(overrides=["data.low_res=32"]).data)
