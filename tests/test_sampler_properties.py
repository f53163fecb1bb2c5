"""Property-based checks of the episode sampler's invariants on generated datasets."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cmkd.data.episodes import EpisodeSampler


@st.composite
def problems(draw):
    n_classes = draw(st.integers(2, 12))
    sizes = draw(st.lists(st.integers(1, 8), min_size=n_classes, max_size=n_classes))
    labels = np.repeat(np.arange(n_classes), sizes)
    labels = labels[draw(st.permutations(list(range(len(labels)))))] if len(labels) < 40 else labels
    groups = [f"g{draw(st.integers(0, 3))}" for _ in range(n_classes)]
    split = sorted(draw(st.sets(st.integers(0, n_classes - 1), min_size=1)))
    return (np.asarray(labels), groups, split, draw(st.integers(1, 6)), draw(st.integers(1, 3)),
            draw(st.integers(1, 3)), draw(st.booleans()), draw(st.integers(0, 2**31)))


@settings(max_examples=150, deadline=None)
@given(problems())
def test_sampler_invariants(problem):
    labels, groups, split, way, shot, query, fine, seed = problem
    try:
        sampler = EpisodeSampler(labels, split, way, shot, query, groups, fine, split="s")
    except ValueError as err:
        msg = str(err)
        counts = np.bincount(labels, minlength=len(groups))
        expected = (way < 2 or way > len(split) or any(counts[c] < shot + query for c in split)
                    or (fine and max(sum(groups[c] == g for c in split) for g in set(groups)) < way))
        assert expected, f"unexpected refusal: {msg}"
        assert any(k in msg for k in ("way", "shot+query", "group"))
        return
    for i in range(3):
        ep = sampler.episode(seed, i)
        idx = ep.indices
        assert idx.shape == (way * (shot + query),)
        assert len(set(idx.tolist())) == len(idx)
        assert len(set(ep.classes.tolist())) == way and set(ep.classes.tolist()) <= set(split)
        got = labels[idx]
        assert (got[: way * shot] == np.repeat(ep.classes, shot)).all()
        assert (got[way * shot:] == np.repeat(ep.classes, query)).all()
        if fine:
            assert len({groups[c] for c in ep.classes}) == 1
        assert (sampler.episode(seed, i).indices == idx).all()
