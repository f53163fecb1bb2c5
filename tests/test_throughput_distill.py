"""benchmarks/throughput.py --distill-modality: the distillation-step timing runs the student it names."""

from __future__ import annotations

import argparse

import pytest
import torch

from conftest import load_benchmark


@pytest.mark.parametrize("modality", ["image", "text"])
def test_distill_timing_trains_the_student_of_the_modality_asked(glyphs, modality, tmp_path):
    throughput = load_benchmark("throughput")
    data = throughput.resized_subset(glyphs, 12, 16, 32)  # 1 shot + 15 queries per class
    args = argparse.Namespace(episodes_per_step=1, precision="fp32", device=torch.device("cpu"), warmup=0,
                              scratch=str(tmp_path))
    result = throughput.bench_distill(data, 4, args, modality)
    assert result["student"] == modality  # read back from the timed models, not echoed
    assert result["steps"] == 4
    assert set(result["seconds_per_step"]) == set(throughput.DISTILL_VARIANTS)
    assert all(sec > 0 for sec in result["seconds_per_step"].values())
    assert not any(tmp_path.iterdir())  # timing steps write no run folder
