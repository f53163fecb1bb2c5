"""The speed options: mixed precision, torch.compile and the host (streamed) data placement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmkd.checkpoint import load_checkpoint
from cmkd.config import load_config
from cmkd.data.dataset import FewShotDataset
from cmkd.data.device import DeviceData, choose_placement
from cmkd.data.episodes import EpisodeSetting
from cmkd.errors import ConfigError
from cmkd.eval.evaluate import episode_list, evaluate_episodes
from cmkd.runtime import forked_rng, resolve_precision
from cmkd.train.loop import Trainer


def test_auto_precision_is_fp32_on_cpu_and_explicit_choices_stand():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ConfigError, match="train.precision"):
        load_config(base={"train.precision": "fp8"})


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_mixed_precision_runs_the_encoder_low_and_the_loss_in_fp32(small, fast_cfg, precision, dtype):
    reference = Trainer(fast_cfg(name="fp32", **{"train.precision": "fp32"}), small)
    trainer = Trainer(fast_cfg(name=precision, **{"train.precision": precision}), small)
    seen = []
    trainer.model.image_encoder.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    logs = trainer.train_step(0)
    ref = reference.train_step(0)
    assert seen == [dtype], "the backbone ran under autocast"
    assert logs["loss"].dtype == torch.float32 and torch.isfinite(logs["loss"])
    assert abs(logs["ce"].item() - ref["ce"].item()) < 0.05 * ref["ce"].item()  # same start, lower precision
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters()), "weights stay fp32"
    assert trainer.scaler.is_enabled() == (precision == "fp16")


def test_fp16_loss_scale_is_checkpointed_and_resumed(small, fast_cfg):
    cfg = fast_cfg(**{"train.precision": "fp16", "train.episodes": 4, "train.val_every": 2, "train.val_episodes": 4})
    trainer = Trainer(cfg, small)
    trainer.scaler = trainer.state.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)  # not the default 65536
    trainer.fit(progress=False)
    meta = load_checkpoint(cfg.run_dir / "last.json")[1]
    assert meta["precision"] == "fp16" and meta["grad_scaler"]["scale"] == 1024.0
    resumed = Trainer(cfg, small)
    assert resumed.scaler.get_scale() == 65536.0
    assert resumed.state.resume() and resumed.scaler.get_scale() == 1024.0


def test_compiled_forward_trains_like_eager(small, fast_cfg, monkeypatch):
    # inductor's C++ code generation takes ~50 s on this CPU (measured by hand: same loss to 1e-4);
    # the test traces with dynamo and runs the AOT graphs eagerly, which checks cmkd's side of it
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module: real_compile(module, backend="aot_eager"))
    eager = Trainer(fast_cfg(name="eager"), small)
    compiled = Trainer(fast_cfg(name="compiled", **{"train.compile": True}), small)
    assert compiled.forward is not compiled.model
    for step in range(3):
        a, b = eager.train_step(step), compiled.train_step(step)
        assert torch.allclose(a["loss"], b["loss"], rtol=1e-4, atol=1e-5), step
    compiled.state.save(best=True)  # the checkpoint holds the plain model's weights, no wrapper prefixes
    names = set(load_checkpoint(compiled.run_dir / "best.json")[0])
    assert names and not any("_orig_mod" in n for n in names)


def test_placement_auto_follows_free_memory():
    assert choose_placement("auto", image_bytes=100, free_bytes=1000) == "device"
    assert choose_placement("auto", image_bytes=600, free_bytes=1000) == "host"
    assert choose_placement("host", image_bytes=1, free_bytes=10**12) == "host"
    assert choose_placement("device", image_bytes=10**12, free_bytes=1) == "device"
    with pytest.raises(ConfigError, match="data.placement"):
        load_config(base={"data.placement": "disk"})


@pytest.fixture
def memmapped(small, tmp_path) -> FewShotDataset:
    """``small`` with its images in a copy-on-write memory map, like a prepared cache."""
    path = tmp_path / "images.npy"
    np.save(path, small.images.numpy())
    images = torch.from_numpy(np.load(path, mmap_mode="c"))
    return FewShotDataset(small.name, images, small.labels, small.class_names, small.groups, small.captions,
                          small.splits, small.meta)


def test_host_placement_trains_bit_identically_with_prefetch(small, memmapped, fast_cfg):
    overrides = {"train.episodes": 12, "train.val_every": 6, "train.val_episodes": 10, "train.episodes_per_step": 2}
    device = Trainer(fast_cfg(name="device", **overrides, **{"data.placement": "device"}), small)
    host = Trainer(fast_cfg(name="host", **overrides, **{"data.placement": "host"}), memmapped)
    assert device.data.placement == "device" and host.data.placement == "host" and host.data.images is None
    device.fit(progress=False)
    host.fit(progress=False)
    for k, v in device.model.state_dict().items():
        assert torch.equal(v, host.model.state_dict()[k]), k
    assert [h["val_acc"] for h in host.history] == [h["val_acc"] for h in device.history]
    assert host.data.host.hits == host.schedule.steps - 1, "every step after the first was gathered in the background"


def test_host_placement_evaluates_like_device_placement(small, memmapped, fast_cfg):
    model = Trainer(fast_cfg(), small).model.eval()
    on_device, on_host = DeviceData(small), DeviceData(memmapped, placement="host")
    eps = episode_list(on_device, "novel", EpisodeSetting(5, 1, 5, False), 30, 3)
    assert np.array_equal(evaluate_episodes(model, on_device, eps, 5, 1), evaluate_episodes(model, on_host, eps, 5, 1))
    idx = np.array([5, 1, 5, 9])
    assert torch.equal(on_host.gather(idx), small.images[idx])
    on_host.prefetch(idx + 1)
    assert torch.equal(on_host.gather(idx), small.images[idx]), "a prefetch of other rows is not used"
    assert torch.equal(on_host.gather(idx + 1), small.images[idx + 1]) and on_host.host.hits == 1


def test_forked_rng_draws_the_manual_seed_stream_and_restores_the_callers():
    """The per-step seeding skips torch.manual_seed's cost but must give the very stream it gives (a run seeded
    before the change stays bit-identical) and leave the caller's stream where it was."""
    torch.manual_seed(123)
    expected = torch.rand(5), torch.randn(3), torch.randint(0, 100, (4,))
    torch.manual_seed(9)
    caller = torch.get_rng_state()
    with forked_rng(torch.device("cpu"), 123):
        drawn = torch.rand(5), torch.randn(3), torch.randint(0, 100, (4,))
    assert all(torch.equal(a, b) for a, b in zip(drawn, expected))
    assert torch.equal(torch.get_rng_state(), caller)
    with pytest.raises(ValueError, match="seed or a state"):
        with forked_rng(torch.device("cpu")):
            pass
