"""cmkd as a PyTorch library: forward with any labels, torch data, any image input, own parts, export."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

import cmkd
from cmkd.cli import main
from cmkd.config import ModelConfig
from cmkd.data.episodes import local_labels
from cmkd.errors import CheckpointError, ConfigError, DatasetError, ImageError
from cmkd.models.fewshot import FewShotModel
from cmkd.registry import BACKBONES


def test_local_labels_rank_distinct_values_per_episode():
    labels = torch.tensor([[40, 7, 40, 99, 7], [1, 1, 0, 5, 5]])
    local, ways = local_labels(labels)
    assert local.tolist() == [[1, 0, 1, 2, 0], [1, 1, 0, 2, 2]] and ways.tolist() == [3, 3]
    values = torch.randint(-50, 50, (3, 12))
    local, ways = local_labels(values)
    for row, loc, w in zip(values, local, ways):
        unique, inverse = torch.unique(row, sorted=True, return_inverse=True)
        assert torch.equal(loc, inverse) and w == len(unique)


@pytest.mark.parametrize("head", ["protonet", "matchingnet", "relationnet", "feat"])
def test_forward_with_shuffled_labels_agrees_with_the_class_ordered_path(head):
    torch.manual_seed(0)
    model = FewShotModel(ModelConfig(modality="image", head=head), 1, 32, None).eval()
    way, shot, query, episodes = 5, 2, 3, 2
    x = torch.randn(episodes, way * (shot + query), 1, 32, 32)
    with torch.no_grad():
        emb = model.embed(x.flatten(0, 1)).view(episodes, way * (shot + query), -1)
        ordered = model.scores(emb, way, shot)  # support class-major, labels 0..way-1
        values = torch.tensor([40, 7, 13, 99, 2])  # class k of the ordered path is labelled values[k]
        perm = torch.randperm(way * shot)
        labels = values.repeat_interleave(shot)[perm].expand(episodes, -1)
        batched = model(x[:, : way * shot][:, perm], labels, x[:, way * shot:])
        single = model(x[0, : way * shot][perm], labels[0], x[0, way * shot:])
    columns = values.argsort()  # forward's columns: ascending label value
    assert batched.shape == (episodes, way * query, way) and single.shape == (way * query, way)
    torch.testing.assert_close(batched, ordered[..., columns], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(single, batched[0], atol=1e-5, rtol=1e-5)


def test_forward_refuses_episodes_with_different_class_counts():
    model = FewShotModel(ModelConfig(modality="image"), 1, 32, None).eval()
    x = torch.randn(2, 4, 1, 32, 32)
    with pytest.raises(ValueError, match="same number of classes"):
        model(x, torch.tensor([[0, 1, 2, 3], [0, 0, 1, 1]]), x)


class Letters(Dataset):
    """A user's map-style dataset without torchvision: (H x W x 1 float image in [0, 1], string label)."""

    def __init__(self, glyphs: cmkd.FewShotDataset, classes: list[int], per_class: int = 8) -> None:
        labels = glyphs.labels.numpy()
        self.idx = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in classes])
        self.glyphs = glyphs

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int):
        j = int(self.idx[i])
        image = self.glyphs.images[j].permute(1, 2, 0).float() / 255
        return image, self.glyphs.class_names[int(self.glyphs.labels[j])]


def test_an_episode_batch_sampler_drives_a_dataloader_over_any_dataset(small):
    ds = Letters(small, small.split_classes("novel")[:6])
    sampler = cmkd.EpisodeBatchSampler(ds, way=3, shot=2, query=2, episodes=4, seed=1)
    loader = DataLoader(ds, batch_sampler=sampler)
    batches = list(loader)
    assert len(batches) == len(sampler) == 4
    images, labels = batches[0]
    assert images.shape == (3 * 4, 32, 32, 1)
    support_labels, query_labels = sampler.split(list(labels))
    assert [support_labels[i] for i in (0, 2, 4)] == [query_labels[i] for i in (0, 2, 4)]  # same class order
    assert len(set(support_labels)) == 3 and support_labels[0] == support_labels[1]
    # labels given instead of read, same stream; another epoch, another stream
    given = cmkd.EpisodeBatchSampler([ds[i][1] for i in range(len(ds))], 3, 2, 2, episodes=4, seed=1)
    assert list(given) == list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != list(given)
    some = sorted({ds[i][1] for i in range(len(ds))})[:3]
    limited = cmkd.EpisodeBatchSampler(ds, 3, 2, 2, episodes=6, seed=1, classes=some)
    assert {ds[i][1] for batch in limited for i in batch} == set(some)
    with pytest.raises(ValueError, match="have no items"):
        cmkd.EpisodeBatchSampler(ds, 3, 2, 2, episodes=1, classes=["nope"])
    with pytest.raises(ConfigError, match="shot\\+query=9"):
        cmkd.EpisodeBatchSampler(ds, 3, 4, 5, episodes=1)


def test_a_users_torch_dataset_becomes_a_cmkd_dataset_and_trains(small, fast_cfg):
    classes = small.split_classes("base")[:6] + small.split_classes("val")[:3] + small.split_classes("novel")[:3]
    ds = Letters(small, classes, per_class=7)
    splits = {small.class_names[c]: s for s in ("base", "val", "novel") for c in small.split_classes(s)}
    data = cmkd.FewShotDataset.from_torch(ds, size=32, channels=1, splits=splits)
    assert len(data) == len(ds) and data.image_shape == (1, 32, 32)
    image, label = data[3]
    assert torch.equal(image, small.images[int(ds.idx[3])]) and data.class_names[label] == ds[3][1]
    assert [len(data.split_classes(s)) for s in ("base", "val", "novel")] == [6, 3, 3]
    trainer = cmkd.Trainer(fast_cfg(**{"train.episodes": 4, "train.val_every": 4, "episode.way": 3,
                                       "episode.query": 2, "train.val_query": 2}), data)
    trainer.fit(progress=False)
    assert trainer.best_acc > 0
    with pytest.raises(DatasetError, match="labels without a split"):
        cmkd.FewShotDataset.from_torch(ds, size=32, channels=1, splits={})


def test_a_dataset_from_image_files_and_captions(tmp_path):
    paths, labels, captions = [], [], []
    for c in range(9):
        for k in range(3):
            path = tmp_path / f"{c}_{k}.png"
            Image.fromarray(np.full((20, 24), 20 * c + k, np.uint8)).save(path)
            paths.append(path), labels.append(c), captions.append([f"class {c}", f"image {k}"])
    data = cmkd.FewShotDataset.from_samples(paths, labels, captions, size=16, channels=1, seed=1)
    assert data.images.shape == (27, 1, 16, 16) and data.captions[4] == ("class 1", "image 1")
    assert sorted(c for s in ("base", "val", "novel") for c in data.split_classes(s)) == list(range(9))
    assert int(data.images[4].float().mean()) == 21
    grouped = cmkd.FewShotDataset.from_samples(paths, labels, captions, size=16, channels=1,
                                               groups={c: f"g{c // 3}" for c in range(9)})
    assert grouped.groups == ["g0"] * 3 + ["g1"] * 3 + ["g2"] * 3
    owner = {g: s for s in ("base", "val", "novel") for c in grouped.split_classes(s) for g in [grouped.groups[c]]}
    assert sorted(owner) == ["g0", "g1", "g2"]  # each group lies in one split
    assert all(owner[grouped.groups[c]] == s for s in ("base", "val", "novel") for c in grouped.split_classes(s))


def test_any_image_layout_gives_the_same_pixels():
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
    want = cmkd.as_image(hwc, 3, 32)
    for image in (hwc.transpose(2, 0, 1), hwc.astype(np.float32) / 255, torch.from_numpy(hwc).permute(2, 0, 1),
                  torch.from_numpy(hwc).permute(2, 0, 1).float() / 255, Image.fromarray(hwc)):
        assert np.array_equal(cmkd.as_image(image, 3, 32), want)
    grey = cmkd.as_image(hwc[..., 0], 1, 32)
    assert grey.shape == (1, 32, 32) and np.array_equal(grey, cmkd.as_image(Image.fromarray(hwc[..., 0]), 1, 32))


@pytest.mark.parametrize("image, match", [
    (np.full((8, 8, 3), 255.0), r"must lie in \[0, 1\]"),
    (np.zeros((8, 8, 3), np.int64), "uint8 \\(0-255\\) or floats"),
    (np.full((8, 8), np.nan), "NaN"),
    (np.zeros((3, 8, 3), np.uint8), "reads both as"),
    (np.zeros((2, 8, 8, 3), np.uint8), "one image at a time"),
    ("not-a-file.png", "does not exist"),
    ({"pixels": 1}, "must be a path, a PIL image"),
])
def test_ambiguous_or_wrong_images_are_refused(image, match):
    with pytest.raises(ImageError, match=match):
        cmkd.as_image(image, 3, 32)


class TinyNet(nn.Module):
    """A user's image encoder: [B, 1, 32, 32] -> [B, 64]."""

    def __init__(self, in_channels: int = 1, image_size: int = 32, dropblock: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture(scope="module")
def own_runs(tmp_path_factory, small):
    """Two runs with a user's encoder: an object passed in, and a class registered by name."""
    out = tmp_path_factory.mktemp("own")
    cmkd.register("backbone", "tinynet_test", TinyNet, "a test's own encoder")
    base = {"out": str(out), "train.episodes": 20, "train.val_every": 20, "train.val_episodes": 10,
            "episode.query": 3, "train.threads": 2}
    by_object = cmkd.Trainer(cmkd.load_config(base={**base, "name": "object"}), small,
                             init=cmkd.build_model(ModelConfig(modality="image"), small, image_encoder=TinyNet()))
    by_object.fit(progress=False)
    by_name = cmkd.Trainer(cmkd.load_config(base={**base, "name": "named", "model.backbone": "tinynet_test"}), small)
    by_name.fit(progress=False)
    yield out, by_object, by_name
    BACKBONES.entries.pop("tinynet_test")


def test_own_encoders_reload_through_the_public_api(own_runs, small):
    out, by_object, by_name = own_runs
    with pytest.raises(CheckpointError, match=r"load_model\(path, image_encoder=TinyNet"):
        cmkd.load_model(out / "object")
    model, _ = cmkd.load_model(out / "object", image_encoder=TinyNet())
    for a, b in zip(model.state_dict().values(), by_object.model.state_dict().values()):
        assert torch.equal(a.cpu(), b.cpu())
    named, meta = cmkd.load_model(out / "named")
    assert meta["config"]["model"]["backbone"] == "tinynet_test" and isinstance(named.image_encoder, TinyNet)
    support = [small.images[i] for i in range(0, 48, 24)]  # two classes, uint8 tensors [1, 32, 32]
    clf = cmkd.OneShotClassifier.load(out / "object", image_encoder=TinyNet()).fit(support, [7, 3])
    assert clf.predict(support) == [7, 3]
    queries = [small.images[i] for i in range(1, 48, 6)]
    as_floats = [(q[0].float() / 255).numpy() for q in queries]  # H x W floats in [0, 1], once divided twice
    np.testing.assert_allclose(clf.predict_proba(as_floats), clf.predict_proba(queries), atol=1e-6)
    assert clf.predict_proba(torch.stack(queries)).shape == (8, 2)  # one batch tensor [N, C, H, W]
    with pytest.raises(TypeError, match=r"one image: \[image\]"):
        clf.predict(queries[0][0].numpy())


def test_a_registered_part_is_refused_by_name_when_not_registered(own_runs):
    out = own_runs[0]
    code = f"import cmkd; cmkd.load_model({str(out / 'named')!r})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode != 0 and "register it first" in done.stderr and "tinynet_test" in done.stderr


def test_the_command_line_imports_a_module_that_registers_parts(own_runs, tmp_path, monkeypatch, capsys):
    out = own_runs[0]
    BACKBONES.entries.pop("tinynet_test")  # as in a fresh process: only --import brings it back
    (tmp_path / "my_parts.py").write_text(textwrap.dedent("""
        import cmkd
        from test_library import TinyNet
        cmkd.register("backbone", "tinynet_test", TinyNet)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    result = tmp_path / "eval.json"
    assert main(["evaluate", str(out / "named"), "--episodes", "5", "--shots", "1", "--query", "2",
                 "--out", str(result)]) == 2
    assert "register it first" in capsys.readouterr().err
    assert main(["--import", "my_parts", "evaluate", str(out / "named"), "--episodes", "5", "--shots", "1",
                 "--query", "2", "--out", str(result)]) == 0
    assert json.loads(result.read_text())
    assert main(["--import", "no_such_parts", "datasets"]) == 2
    assert "no such module" in capsys.readouterr().err


class CosineHead(nn.Module):
    """A user's head: scaled cosine similarity to the class means (follows cmkd.models.heads.FewShotHead)."""

    wants_maps = False
    loss_name = "ce"

    @classmethod
    def from_config(cls, cfg, dim, map_shape):
        return cls()

    @staticmethod
    def loss(scores, labels):
        return nn.functional.cross_entropy(scores.flatten(0, 1), labels.flatten())

    def forward(self, support, support_labels, query, way):
        onehot = nn.functional.one_hot(support_labels, way).float()
        means = onehot.transpose(1, 2) @ support / onehot.sum(1).unsqueeze(-1)
        return 10 * nn.functional.normalize(query, dim=-1) @ nn.functional.normalize(means, dim=-1).transpose(1, 2)


def test_a_registered_head_and_text_encoder_train_and_reload(small, fast_cfg):
    from cmkd.models.text_encoders import BagOfWords
    from cmkd.registry import HEADS, TEXT_ENCODERS

    cmkd.register("head", "cosine_test", CosineHead)
    cmkd.register("text_encoder", "bow_test", BagOfWords, "the built-in bag of words under a user's name")
    try:
        cfg = fast_cfg(**{"model.modality": "text", "model.head": "cosine_test", "model.text_encoder": "bow_test",
                          "train.episodes": 4, "train.val_every": 4})
        trainer = cmkd.Trainer(cfg, small)
        trainer.fit(progress=False)
        model, meta = cmkd.load_model(trainer.run_dir)
        assert isinstance(model.head, CosineHead) and isinstance(model.text_encoder, BagOfWords)
        assert meta["config"]["model"]["head"] == "cosine_test"
    finally:
        HEADS.entries.pop("cosine_test")
        TEXT_ENCODERS.entries.pop("bow_test")


def test_register_refuses_a_taken_name_and_a_bad_kind():
    with pytest.raises(ValueError, match="already a backbone"):
        cmkd.register("backbone", "conv4", TinyNet)
    with pytest.raises(ValueError, match="unknown kind"):
        cmkd.register("optimizer", "mine", TinyNet)


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_export_runs_outside_pytorch_and_matches_it(own_runs, tmp_path, fmt, capsys):
    out = own_runs[0]
    BACKBONES.entries.setdefault("tinynet_test", cmkd.registry.Entry(TinyNet, ""))
    path = tmp_path / f"student.{fmt}"
    assert main(["export", str(out / "named"), "--format", fmt, "--out", str(path), "--way", "3"]) == 0
    model, _ = cmkd.load_model(out / "named")
    torch.manual_seed(0)
    support, query = torch.rand(7, 1, 32, 32), torch.rand(5, 1, 32, 32)
    labels = torch.tensor([12, 4, 4, 30, 12, 30, 4])  # any values, any order, any shots
    with torch.no_grad():
        want = model(model.preprocess((support * 255).round().to(torch.uint8)), labels,
                     model.preprocess((query * 255).round().to(torch.uint8)))
        support, query = (support * 255).round() / 255, (query * 255).round() / 255
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path))
        got = session.run(None, {"support": support.numpy(), "support_labels": labels.numpy(),
                                 "query": query.numpy()})[0]
    else:
        got = torch.export.load(str(path)).module()(support, labels, query).detach().numpy()
    assert got.shape == (5, 3)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-4)
    two_classes = labels.clone().masked_fill(labels == 30, 12)  # 2 classes for a 3-way graph: NaN, not an answer
    if fmt == "onnx":
        wrong = session.run(None, {"support": support.numpy(), "support_labels": two_classes.numpy(),
                                   "query": query.numpy()})[0]
    else:
        wrong = torch.export.load(str(path)).module()(support, two_classes, query).detach().numpy()
    assert np.isnan(wrong).all()


def test_a_text_model_does_not_export(tmp_path, small, fast_cfg):
    trainer = cmkd.Trainer(fast_cfg(**{"model.modality": "text", "train.episodes": 2, "train.val_every": 2}), small)
    trainer.fit(progress=False)
    with pytest.raises(ConfigError, match="only image models export"):
        cmkd.export(trainer.run_dir, tmp_path / "t.onnx")


def test_files_take_their_mode_from_the_umask(tmp_path, small, fast_cfg):
    import os
    import stat

    old = os.umask(0o027)
    try:
        trainer = cmkd.Trainer(fast_cfg(**{"train.episodes": 2, "train.val_every": 2}), small)
        trainer.fit(progress=False)
        cmkd.export(trainer.run_dir, tmp_path / "m.pt2", "pt2")
    finally:
        os.umask(old)
    files = [*trainer.run_dir.iterdir(), tmp_path / "m.pt2"]
    modes = {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files if f.is_file() and f.name != ".lock"}
    assert set(modes.values()) == {"0o640"}, modes
