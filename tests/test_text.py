import dataclasses

import torch

from cmkd.data.dataset import FewShotDataset
from cmkd.data.device import DeviceData
from cmkd.data.text import UNK, CaptionTable, Vocab, clean_caption, tokenize


def test_tokenize_lowercases_and_splits_punctuation():
    assert tokenize("This bird has a RED crown, and\ufffd white-ish wings.") == \
        ["this", "bird", "has", "a", "red", "crown", "and", "white", "ish", "wings"]
    assert clean_caption("  a\ufffdb  c ") == "a b c"
    for text in ("  a\ufffdb  c ", "İstanbul\t\ufffd\ufffdWREN\n"):  # cleaning first changes no word
        assert tokenize(text) == tokenize(clean_caption(text))


def test_vocab_from_training_captions_maps_unseen_words_to_unk():
    v = Vocab.build(["latin small letter a", "latin capital letter b"])
    ids = v.encode_batch(["latin small letter omega"], 6)[0].tolist()
    assert ids[:3] == [v.index["latin"], v.index["small"], v.index["letter"]]
    assert ids[3] == UNK and ids[4:] == [0, 0]
    assert Vocab.from_dict(v.to_dict()).words == v.words


def test_caption_table_dedupes_and_picks_among_a_samples_captions():
    caps = [("a b", "c d"), ("a b",), ("e f", "g h", "c d")]
    table = CaptionTable.build(caps, lambda texts: torch.arange(len(texts)))
    assert table.inputs.tolist() == [0, 1, 2, 3]  # 4 distinct captions
    assert table.counts.tolist() == [2, 1, 3]
    assert table.sample_captions.tolist() == [[0, 1, -1], [0, -1, -1], [2, 3, 1]]
    g = torch.Generator().manual_seed(0)
    picks = torch.stack([table.random_ids(torch.tensor([0, 1, 2]), g) for _ in range(200)])
    assert set(picks[:, 0].tolist()) == {0, 1}
    assert set(picks[:, 1].tolist()) == {0}
    assert set(picks[:, 2].tolist()) == {1, 2, 3}
    assert table.first_ids(torch.tensor([2])).tolist() == [2]


def test_a_dataset_builds_its_vocabulary_and_each_kind_of_caption_table_once():
    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    data = FewShotDataset.from_samples(images, ["x", "x", "y", "y"], ["a b", "c", "a d", "e"],
                                       splits={"x": "base", "y": "novel"})
    assert data.base_vocabulary() is data.base_vocabulary()
    assert data.base_vocabulary().words[2:] == ["a", "b", "c"]  # the novel class's words stay unseen
    calls: list[str] = []

    def prepare(kind: str):
        return lambda texts: (calls.append(kind), torch.arange(len(texts)))[1]

    first = DeviceData(data).caption_table("tokens", prepare("tokens"))
    assert DeviceData(data).caption_table("tokens", prepare("tokens")).inputs is first.inputs  # a second model
    DeviceData(data).caption_table(1234, prepare("by id"))  # a key that is no name is built per placement
    DeviceData(data).caption_table(1234, prepare("by id"))
    assert calls == ["tokens", "by id", "by id"]
    for kind in ("other", "third", "tokens"):  # the last two kinds are kept
        data.caption_table(kind, prepare(kind))
    assert calls[3:] == ["other", "third", "tokens"]
    changed = dataclasses.replace(data, captions=[("z",)] * 4)  # a changed copy derives its own
    assert changed.base_vocabulary().words[2:] == ["z"]
    assert changed.caption_table("tokens", prepare("copy")).counts.tolist() == [1, 1, 1, 1]
    assert calls[-1] == "copy"
