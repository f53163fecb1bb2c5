"""benchmarks/throughput.py --distill-modality, --distill-query: the distillation-step timing runs the student it names
on episodes of the query count asked."""

from __future__ import annotations

import argparse

import pytest
import torch

from conftest import load_benchmark


@pytest.mark.parametrize(("modality", "query"), [("image", 15), ("text", 5), ("image", 2)])
def test_distill_timing_trains_the_student_of_the_modality_asked(glyphs, modality, query, tmp_path, monkeypatch):
    throughput = load_benchmark("throughput")
    built = []  # the episode query count of every trainer the timing builds

    def trainer(cfg, *a, **kw):
        built.append(cfg.episode.query)
        return real(cfg, *a, **kw)

    real = throughput.Trainer
    monkeypatch.setattr(throughput, "Trainer", trainer)
    data = throughput.resized_subset(glyphs, 12, 16, 32)  # 1 shot + 15 queries per class
    args = argparse.Namespace(episodes_per_step=1, precision="fp32", device=torch.device("cpu"), warmup=0,
                              scratch=str(tmp_path), distill_query=query)
    result = throughput.bench_distill(data, 4, args, modality)
    assert result["student"] == modality  # read back from the timed models, not echoed
    assert result["steps"] == 4
    # a variant relating K queries a class is timed only on episodes of more than K; clean steps on image students
    timed = {name for name, (extra, _) in throughput.DISTILL_VARIANTS.items()
             if throughput.timed_variant(extra, query, modality)}
    assert ("distill_queries_3" in timed) == (query > 3)
    assert ("distill_clean_steps_2" in timed) == (modality == "image")
    assert set(result["seconds_per_step"]) == timed
    assert result["query"] == query and built == [query] * (len(timed) + 1)  # + the teacher
    assert all(sec > 0 for sec in result["seconds_per_step"].values())
    assert not any(tmp_path.iterdir())  # timing steps write no run folder
