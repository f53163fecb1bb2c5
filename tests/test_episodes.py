import numpy as np
import pytest

from cmkd.data.episodes import EpisodeSampler, episode_labels


def _sampler(ds, split="base", **kw):
    args = dict(way=5, shot=1, query=3, groups=ds.groups, fine_grained=False, class_names=ds.class_names)
    args.update(kw)
    return EpisodeSampler(ds.labels, ds.split_classes(split), split=split, **args)


def test_episode_counts_and_layout(small):
    s = _sampler(small, way=5, shot=2, query=3)
    ep = s.episode(0, 0)
    assert ep.indices.shape == (5 * (2 + 3),)
    labels = small.labels.numpy()[ep.indices]
    # class-major support then class-major query
    assert (labels[:10] == np.repeat(ep.classes, 2)).all()
    assert (labels[10:] == np.repeat(ep.classes, 3)).all()
    assert len(set(ep.indices.tolist())) == len(ep.indices), "no sample twice in an episode"
    assert episode_labels(5, 2).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_episodes_are_deterministic_and_seed_dependent(small):
    s = _sampler(small)
    assert (s.episode(3, 7).indices == s.episode(3, 7).indices).all()
    assert (s.fixed(10, 1) == s.fixed(10, 1)).all()
    assert not (s.fixed(10, 1) == s.fixed(10, 2)).all()
    # a batch is the same episodes as drawn one by one (resume relies on it)
    assert (s.batch(5, 4, 3)[1] == s.episode(5, 5).indices).all()


def test_episodes_stay_in_their_split(small):
    for split in ("base", "val", "novel"):
        s = _sampler(small, split)
        classes = set(small.split_classes(split))
        drawn = set(small.labels.numpy()[s.fixed(50, 0).ravel()].tolist())
        assert drawn <= classes


def test_splits_are_class_and_group_disjoint(glyphs):
    sets = {k: set(v) for k, v in glyphs.splits.items()}
    assert not (sets["base"] & sets["val"]) and not (sets["base"] & sets["novel"]) and not (sets["val"] & sets["novel"])
    groups = {k: {glyphs.groups[c] for c in v} for k, v in glyphs.splits.items()}
    assert not (groups["base"] & groups["novel"]), "a sibling of a novel class is seen in training"
    assert not (groups["base"] & groups["val"]) and not (groups["val"] & groups["novel"])


def test_fine_grained_episodes_share_one_group(glyphs):
    s = _sampler(glyphs, "novel", fine_grained=True)
    for row in s.fixed(30, 0):
        classes = np.unique(glyphs.labels.numpy()[row])
        assert len(classes) == 5
        assert len({glyphs.groups[c] for c in classes}) == 1


def test_way_larger_than_split_is_a_clear_error(small):
    with pytest.raises(ValueError, match="way=500 is larger than the 60 classes of the novel split"):
        _sampler(small, "novel", way=500)


def test_too_few_images_names_the_class(small):
    with pytest.raises(ValueError, match=r"shot\+query=40 .*lower the shot or the queries"):
        _sampler(small, shot=20, query=20)


def test_fine_grained_without_big_groups_is_a_clear_error(small):
    with pytest.raises(ValueError, match="no group of the base split has 50 classes"):
        _sampler(small, way=50, fine_grained=True)
