"""Training: learning happens, checkpoints round-trip, and resume is exact."""

import copy
import itertools
import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cmkd import distributed
from cmkd.checkpoint import (
    load_checkpoint,
    load_latest_good,
    load_model,
    model_state,
    save_checkpoint,
)
from cmkd.data.device import DeviceData
from cmkd.data.episodes import EpisodeSetting
from cmkd.distributed import Ranks
from cmkd.errors import CheckpointError, ConfigError, TrainingDiverged
from cmkd.eval.evaluate import Embedded, EmbeddedPerLookup, embed_samples, episode_list, evaluate_episodes
from cmkd.models import inputs
from cmkd.train import distiller, loop
from cmkd.train import logs as run_logs
from cmkd.train.distiller import embed_teacher as real_embed_teacher
from cmkd.train.logs import RunningMeans
from cmkd.train.loop import Trainer
from conftest import subset


def test_tiny_run_lowers_loss_and_beats_chance(small, fast_cfg):
    cfg = fast_cfg(**{"train.episodes": 60, "train.val_every": 60})
    trainer = Trainer(cfg, small)
    data = trainer.data
    eps = episode_list(data, "novel", EpisodeSetting(5, 1, 5, False), 100, 11)
    before = evaluate_episodes(trainer.model, data, eps, 5, 1).mean()
    losses = [trainer.train_step(s)["ce"].item() for s in range(60)]
    after = evaluate_episodes(trainer.model, data, eps, 5, 1).mean()
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    assert after > 0.5, f"5-way accuracy {after:.2f} should be well above chance (0.2)"
    assert after > before


def test_teacher_with_text_trains(small, fast_cfg):
    cfg = fast_cfg(**{"model.modality": "image+text", "train.episodes": 20})
    trainer = Trainer(cfg, small)
    trainer.fit(progress=False)
    assert trainer.best_acc > 0.5
    assert trainer.model.vocab is not None and "latin" in trainer.model.vocab.index


def test_checkpoint_round_trip(small, fast_cfg, tmp_path):
    trainer = Trainer(fast_cfg(), small)
    trainer.train_step(0)
    save_checkpoint(tmp_path / "ck", trainer.model, {"spec": trainer.model.spec(), "note": "x"},
                    trainer.optimizer)
    model, meta = load_model(tmp_path / "ck.json")
    assert meta["note"] == "x"
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    eps = episode_list(trainer.data, "novel", EpisodeSetting(5, 1, 5, False), 10, 0)
    trainer.model.eval()
    assert np.array_equal(evaluate_episodes(trainer.model, trainer.data, eps, 5, 1),
                          evaluate_episodes(model, trainer.data, eps, 5, 1))


def test_corrupt_checkpoint_is_detected_and_the_previous_one_used(small, fast_cfg, tmp_path):
    trainer = Trainer(fast_cfg(), small)
    save_checkpoint(tmp_path / "ck", trainer.model, {"spec": trainer.model.spec(), "step": 1})
    trainer.train_step(0)
    save_checkpoint(tmp_path / "ck", trainer.model, {"spec": trainer.model.spec(), "step": 2})
    assert len(list(tmp_path.glob("ck-*.safetensors"))) == 2  # the current and the previous one
    weights = tmp_path / json.loads((tmp_path / "ck.json").read_text())["weights_file"]
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="do not match the checksum"):
        load_checkpoint(tmp_path / "ck.json")
    with pytest.warns(UserWarning, match="falling back to the previous checkpoint"):
        _, meta, used = load_latest_good(tmp_path / "ck.json")
    assert meta["step"] == 1 and used.name == "ck.prev.json"
    (tmp_path / "ck.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="is corrupt"):
        load_checkpoint(tmp_path / "ck.json")


def test_old_weight_files_are_removed(small, fast_cfg, tmp_path):
    trainer = Trainer(fast_cfg(), small)
    for step in range(4):
        trainer.train_step(step)
        save_checkpoint(tmp_path / "ck", trainer.model, {"spec": trainer.model.spec()})
    assert len(list(tmp_path.glob("ck-*.safetensors"))) == 2


def _ticking_clock(monkeypatch, start: float) -> None:
    """The trainer's clock made to advance one second per reading, from ``start``."""
    ticks = itertools.count()
    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=lambda: start + next(ticks)))


def test_resume_after_a_crash_matches_an_uninterrupted_run(small, fast_cfg, tmp_path, monkeypatch):
    overrides = {"train.episodes": 30, "train.val_every": 10}
    _ticking_clock(monkeypatch, 0.0)
    straight = Trainer(fast_cfg(**overrides, name="straight"), small)
    straight.fit(progress=False)

    crashing = Trainer(fast_cfg(**overrides, name="crashed"), small)
    real_step = Trainer.train_step

    def step_then_crash(self, step):
        if step == 15:  # between the checkpoints at 10 and 20
            raise KeyboardInterrupt
        return real_step(self, step)

    monkeypatch.setattr(Trainer, "train_step", step_then_crash)
    _ticking_clock(monkeypatch, 0.0)
    with pytest.raises(KeyboardInterrupt):
        crashing.fit(progress=False)
    monkeypatch.setattr(Trainer, "train_step", real_step)
    resumed = Trainer(fast_cfg(**overrides, name="crashed"), small)
    _ticking_clock(monkeypatch, 500.0)  # another process: its clock has its own origin
    resumed.fit(resume=True, progress=False)
    # the training time is summed over the resume (one tick per validation here), not restarted by it
    assert [h["seconds"] for h in resumed.history] == [h["seconds"] for h in straight.history] == [1.0, 2.0, 3.0]
    assert resumed.state.progress.step == straight.state.progress.step == 30
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert [h["val_acc"] for h in resumed.history] == [h["val_acc"] for h in straight.history]
    best_a = model_state(load_checkpoint(straight.run_dir / "best.json")[0])
    best_b = model_state(load_checkpoint(resumed.run_dir / "best.json")[0])
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)


def test_nan_loss_stops_with_the_step_and_checkpoint(small, fast_cfg):
    trainer = Trainer(fast_cfg(), small)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"at step 0 .*no checkpoint was written yet"):
        trainer.fit(progress=False)
    assert not (trainer.run_dir / "last.json").exists(), "nothing is saved from a diverged run"


def test_a_validation_not_above_chance_warns_and_names_the_weights_to_lower(small, fast_cfg, caplog):
    healthy = Trainer(fast_cfg(), small)
    with caplog.at_level(logging.WARNING, logger="cmkd"):
        healthy.fit(progress=False)
    assert healthy.best_acc > 0.3 and "not above chance" not in caplog.text
    dead = Trainer(fast_cfg(name="dead"), small)
    last_bn = [m for m in dead.model.modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]
    with torch.no_grad():  # every unit of the last block below zero: a dead ReLU, constant embeddings, no gradient
        last_bn.weight.zero_()
        last_bn.bias.fill_(-1.0)
    with caplog.at_level(logging.WARNING, logger="cmkd"):
        dead.fit(progress=False)  # it warns and trains on: a collapse may recover
    warnings = [r.getMessage() for r in caplog.records if "not above chance" in r.getMessage()]
    assert len(warnings) == 2 and warnings[0].startswith("validation at episode 20 is not above chance: 20.00 ± 0.00%")
    assert "lsl.weight" in warnings[0] and (dead.run_dir / "last.json").exists()


@pytest.mark.parametrize("rank, warns", [(0, True), (1, False)])
def test_only_the_main_process_warns_about_chance(rank, warns, monkeypatch, caplog):
    monkeypatch.setattr(run_logs, "ranks", lambda: Ranks(rank, 2))
    with caplog.at_level(logging.WARNING, logger="cmkd"):
        run_logs.warn_if_at_chance(0.2, 0.0, 5, 40)
        run_logs.warn_if_at_chance(0.5, 0.02, 5, 80)  # above chance: never a warning
    heads = [r.getMessage().split(":")[0] for r in caplog.records]
    assert heads == ["validation at episode 40 is not above chance"] * warns


def test_distillation_step_runs_with_a_teacher(small, fast_cfg):
    teacher = Trainer(fast_cfg(**{"model.modality": "image+text", "name": "t"}), small).model
    student = Trainer(fast_cfg(**{"name": "s", "distill.method": "srl", "distill.srl.angle": 1.0}), small,
                      teacher=teacher)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    logs = student.train_step(0)
    assert {"srl_rel", "srl_dist", "srl_angle", "ce", "loss"} <= set(logs) and logs["srl_rel"] > 0
    assert str(student.objective) == "loss = ce + 4·(srl_rel + srl_dist + srl_angle)"
    terms = logs["ce"] + 4 * (logs["srl_rel"] + logs["srl_dist"] + logs["srl_angle"])
    assert torch.allclose(logs["loss"], terms), "the logged total is the printed objective of the logged terms"
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items()), "teacher must not change"
    assert teacher.training and all(p.requires_grad for p in teacher.parameters()), "the caller's module untouched"
    # a text student learns from an image+text teacher the same way (the reverse direction)
    text_student = Trainer(fast_cfg(**{"name": "ts", "model.modality": "text"}), small, teacher=teacher)
    assert text_student.train_step(0)["srl_rel"] > 0


def test_the_teachers_clean_pass_runs_once_at_first_use_and_is_shared(small, fast_cfg, monkeypatch):
    teacher = Trainer(fast_cfg(**{"model.modality": "image+text", "name": "t"}), small).model
    calls = []
    monkeypatch.setattr(distiller, "embed_teacher", lambda *a: calls.append(1) or real_embed_teacher(*a))
    long = {"train.episodes": 96}  # 96 episodes of 30 draw at least half the 2,880 base samples: the one pass
    student = Trainer(fast_cfg(**{"name": "s", **long}), small, teacher=teacher)
    assert calls == [], "no teacher pass before training (a refused run costs none)"
    student.train_step(0)
    student.train_step(1)
    assert len(calls) == 1, "one pass serves every step"
    again = Trainer(fast_cfg(**{"name": "s2", **long}), small, teacher=teacher, teacher_cache=student.teacher_cache)
    again.train_step(0)
    assert len(calls) == 1, "and every student given the cache"
    live = Trainer(fast_cfg(**{"name": "s3", "distill.teacher_inputs": "same"}), small, teacher=teacher)
    live.train_step(0)
    assert len(calls) == 1 and live.teacher_cache is None, "the live teacher embeds each step's own inputs"


def test_a_short_run_embeds_for_the_teacher_each_steps_own_samples(small, fast_cfg, monkeypatch):
    """A run whose episodes draw fewer than half as many samples as the base split holds embeds each step's samples
    at that step, to the values of the full pass and the same whatever came before (a resumed run continues
    exactly); a longer run makes the one pass, and does not take a short run's cache."""
    teacher = Trainer(fast_cfg(**{"model.modality": "image+text", "name": "t"}), small).model
    short = Trainer(fast_cfg(**{"name": "s"}), small, teacher=teacher)  # 40 episodes of 30 < 2,880 / 2
    cache, base = short.teacher_cache, small.split_indices("base")
    assert isinstance(cache, EmbeddedPerLookup)
    episodes = [short.schedule.indices(step) for step in range(3)]
    first = cache.rows(episodes[0])
    assert first.shape == (*episodes[0].shape, teacher.out_dim)
    full = embed_samples(short.distiller.teacher, short.data, base)
    torch.testing.assert_close(first, full.rows(episodes[0]))
    embedded, embed = [], cache.embed
    monkeypatch.setattr(cache, "embed", lambda idx: embedded.append(len(idx)) or embed(idx))
    for other in episodes[1:]:
        cache.rows(other)
    assert torch.equal(cache.rows(episodes[0]), first)
    assert embedded == [30, 30, 30], "each lookup embeds its own samples: nothing kept that a resumed run would lack"
    with pytest.raises(KeyError, match="not embedded"):
        cache.rows(small.split_indices("val")[:30].reshape(1, -1))
    made = real_embed_teacher(teacher.eval(), short.data, fast_cfg(**{"train.episodes": 48}))  # 1,440 = 2,880 / 2
    assert type(made) is Embedded and np.array_equal(made.indices, base)
    longer = Trainer(fast_cfg(**{"name": "l", "train.episodes": 48}), small, teacher=teacher, teacher_cache=cache)
    assert type(longer.teacher_cache) is Embedded, "a longer run given a short run's cache makes its own pass"


def test_distilling_every_third_step_triples_the_weight_and_leaves_the_other_steps_plain(small, fast_cfg):
    teacher = Trainer(fast_cfg(**{"model.modality": "image+text", "name": "t"}), small).model
    cfg = fast_cfg(**{"name": "s", "distill.method": "srl", "distill.every": 3, "train.episodes": 12,
                      "train.val_every": 12})
    student = Trainer(cfg, small, teacher=teacher)
    assert str(student.objective) == "loss = ce + 12·(srl_rel + srl_dist) (every 3 steps)"
    assert [student.objective.distills_at(s, 12) for s in range(6)] == [True, False, False, True, False, False]
    first, second = student.train_step(0), student.train_step(1)
    assert torch.allclose(first["loss"], first["ce"] + 12 * (first["srl_rel"] + first["srl_dist"]))
    assert set(second) == {"ce", "loss", "acc"} and torch.equal(second["loss"], second["ce"])
    student = Trainer(cfg, small, teacher=teacher)
    student.fit(progress=False)  # logs of steps with and without the terms are read together
    logged = [json.loads(line) for line in (student.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("srl_rel" in r for r in logged if r["kind"] == "train")


def test_distilling_fine_grained_episodes_only_distils_exactly_the_steps_drawn_fine_grained(small, fast_cfg,
                                                                                             monkeypatch):
    """``distill.episodes=fine``: a step has the distillation terms iff its episodes are fine-grained, twice as
    heavily at ``train.fine_grained_share=0.5``, and the episodes drawn are those of ``distill.episodes=all``.
    Several processes draw their own kinds of episode in a step, so it is refused there."""
    teacher = Trainer(fast_cfg(**{"model.modality": "image+text", "name": "t"}), small).model
    runs = {kind: Trainer(fast_cfg(**{"name": kind, "distill.episodes": kind, "train.fine_grained_share": 0.5}), small,
                          teacher=teacher) for kind in ("fine", "all")}
    fine = runs["fine"]
    kinds = [fine.schedule.fine(s) for s in range(8)]
    assert str(fine.objective) == "loss = ce + 8·(srl_rel + srl_dist) (fine-grained episodes only)"
    assert any(kinds) and not all(kinds)
    for step, kind in enumerate(kinds):
        logs = fine.train_step(step)
        assert ("srl_rel" in logs) == kind and np.array_equal(fine.schedule.indices(step),
                                                               runs["all"].schedule.indices(step))
        if kind:
            assert torch.allclose(logs["loss"], logs["ce"] + 8 * (logs["srl_rel"] + logs["srl_dist"]))
    monkeypatch.setattr(distributed, "ranks", lambda: distributed.Ranks(0, 2))  # ranks draw their own kinds
    with pytest.raises(ConfigError, match=r"distill.episodes=fine needs one training process.*distill.every"):
        distiller.Distiller(teacher, fine.distiller.method, fine.cfg, fine.data)


def test_an_unaugmented_image_student_takes_the_srls_clean_view_from_its_training_forward(small, fast_cfg):
    """With ``data.augment=false`` an image student's training inputs are the teacher's clean inputs: one forward
    serves the head's loss and the SRL, with the terms and gradients of the second forward it replaces."""
    teacher = Trainer(fast_cfg(**{"model.modality": "image+text", "name": "t"}), small).model
    cfg = fast_cfg(**{"name": "s", "data.augment": False})
    one, two = Trainer(cfg, small, teacher=teacher), Trainer(cfg, small, teacher=teacher)
    two.distiller.trains_on_clean = lambda model, augmented: False  # the two-forward path
    calls: dict[str, int] = {"one": 0, "two": 0}
    for name, trainer in (("one", one), ("two", two)):
        def counted(*args, _forward=trainer.forward, _name=name, **kwargs):
            calls[_name] += 1
            return _forward(*args, **kwargs)
        trainer.forward = counted
    logs_one, logs_two = one.train_step(0), two.train_step(0)
    assert calls == {"one": 1, "two": 2}
    assert set(logs_one) == set(logs_two) and all(torch.allclose(logs_one[k], logs_two[k]) for k in logs_one)
    g_one, g_two = (torch.cat([p.grad.flatten() for p in t.model.parameters() if p.grad is not None])
                    for t in (one, two))
    assert g_one.shape == g_two.shape  # one graph or two: the same gradient up to float32 summation order
    assert (g_one - g_two).norm() < 1e-3 * g_two.norm()
    # an augmented image student, and a text student (one sampled caption vs all of them), keep the second forward
    augmented = Trainer(fast_cfg(**{"name": "a"}), small, teacher=teacher)
    text = Trainer(fast_cfg(**{"name": "x", "model.modality": "text", "data.augment": False}), small, teacher=teacher)
    assert not augmented.distiller.trains_on_clean(augmented.model, True)
    assert not text.distiller.trains_on_clean(text.model, False)


def test_clean_steps_train_the_distillation_steps_unaugmented_in_one_forward(small, fast_cfg):
    """``distill.clean_steps`` with ``every=2``: step 0 distils on the clean images in one forward, the step an
    unaugmented run takes; step 1 is the augmented plain step of the shipped run. A text student may not set it."""
    teacher = Trainer(fast_cfg(**{"model.modality": "image+text", "name": "t"}), small).model
    runs = {name: Trainer(fast_cfg(**{"name": name, "distill.every": 2, **extra}), small, teacher=teacher)
            for name, extra in (("clean", {"distill.clean_steps": True}), ("shipped", {}),
                                ("unaug", {"data.augment": False}))}
    calls = dict.fromkeys(runs, 0)
    for name, trainer in runs.items():
        trainer.model.load_state_dict(runs["clean"].model.state_dict())

        def counted(*args, _forward=trainer.forward, _name=name, **kwargs):
            calls[_name] += 1
            return _forward(*args, **kwargs)
        trainer.forward = counted
    logs = {name: trainer.train_step(0) for name, trainer in runs.items()}
    assert calls == {"clean": 1, "shipped": 2, "unaug": 1}
    assert all(torch.equal(logs["clean"][k], logs["unaug"][k]) for k in logs["unaug"])
    assert not torch.equal(logs["clean"]["ce"], logs["shipped"]["ce"])  # the shipped step trained on augmented images
    fresh = Trainer(fast_cfg(**{"name": "x"}), small).model.state_dict()
    for trainer in runs.values():
        trainer.model.load_state_dict(fresh)
    logs = {name: trainer.train_step(1) for name, trainer in runs.items()}
    assert set(logs["clean"]) == {"ce", "loss", "acc"}
    assert all(torch.equal(logs["clean"][k], logs["shipped"][k]) for k in logs["clean"])
    assert not torch.equal(logs["clean"]["ce"], logs["unaug"]["ce"])
    with pytest.raises(ConfigError, match="distill.clean_steps"):
        fast_cfg(**{"model.modality": "text", "distill.clean_steps": True})


def test_while_teacher_leads_distils_only_after_validations_the_teacher_led(small, fast_cfg, caplog):
    """``distill.while_teacher_leads``: a step distils before the first validation and after one where the teacher
    (scored once on the same val episodes) was ahead; after one the student led, it is the plain student's step."""
    caplog.set_level("INFO", logger="cmkd")
    teacher = Trainer(fast_cfg(**{"model.modality": "image+text", "name": "t"}), small).model
    gated = Trainer(fast_cfg(**{"name": "g", "distill.while_teacher_leads": True}), small, teacher=teacher)
    always = Trainer(fast_cfg(**{"name": "a"}), small, teacher=teacher)
    plain = Trainer(fast_cfg(**{"name": "p"}), small)
    teacher_acc = gated.validate(gated.distiller.teacher)[0]
    assert 0 < teacher_acc < 1
    assert gated.distils(0) and "srl_rel" in gated.train_step(0)  # not validated yet
    calls = []
    gated.validate = lambda model: calls.append(model) or Trainer.validate(gated, model)
    for trainer in (gated, always):
        trainer.history.append({"episodes": 20, "val_acc": teacher_acc})  # the student level with its teacher
    assert not gated.distils(0) and always.distils(0)
    assert gated.distiller.val_acc == teacher_acc and calls == [gated.distiller.teacher]
    plain.model.load_state_dict(gated.model.state_dict())
    plain.optimizer.load_state_dict(copy.deepcopy(gated.optimizer.state_dict()))  # Adam's state after step 0
    logs, plain_logs = gated.train_step(1), plain.train_step(1)
    assert set(logs) == {"ce", "loss", "acc"} and all(torch.equal(logs[k], plain_logs[k]) for k in logs)
    assert all(torch.equal(a, b) for a, b in zip(gated.model.parameters(), plain.model.parameters(), strict=True))
    gated.history.append({"episodes": 40, "val_acc": teacher_acc - 0.05})  # the teacher ahead again
    assert gated.distils(2) and "srl_rel" in gated.train_step(2)
    assert len(calls) == 1  # the teacher was scored once
    turns = [r.getMessage().split(": ")[-1] for r in caplog.records if r.getMessage().startswith("after")]
    assert turns == ["plain steps", "distilling"]  # the log says when the gate turns, once each time


def test_distilling_until_a_share_of_training_leaves_the_later_steps_the_plain_students(small, fast_cfg):
    """``distill.until=0.5``: the first half of the steps distil as by default, the second half are the plain
    student's steps bit for bit (its loss, logs and update)."""
    teacher = Trainer(fast_cfg(**{"model.modality": "image+text", "name": "t"}), small).model
    flags = {"train.episodes": 8, "train.val_every": 8}
    early = Trainer(fast_cfg(**{**flags, "name": "u", "distill.until": 0.5}), small, teacher=teacher)
    always = Trainer(fast_cfg(**{**flags, "name": "a"}), small, teacher=teacher)
    plain = Trainer(fast_cfg(**{**flags, "name": "p"}), small)
    assert str(early.objective) == "loss = ce + 4·(srl_rel + srl_dist) (the first 0.5 of the steps)"
    assert [early.objective.distills_at(s, 8) for s in range(8)] == [True] * 4 + [False] * 4
    first, reference = early.train_step(0), always.train_step(0)
    assert "srl_rel" in first and all(torch.equal(first[k], reference[k]) for k in reference)
    plain.model.load_state_dict(early.model.state_dict())
    plain.optimizer.load_state_dict(copy.deepcopy(early.optimizer.state_dict()))
    logs, plain_logs = early.train_step(4), plain.train_step(4)
    assert set(logs) == {"ce", "loss", "acc"} and all(torch.equal(logs[k], plain_logs[k]) for k in logs)
    assert all(torch.equal(a, b) for a, b in zip(early.model.parameters(), plain.model.parameters(), strict=True))
    assert "srl_rel" in always.train_step(4)


@pytest.mark.parametrize("teacher_val_acc", [0.0, 1.0])
def test_the_logs_record_the_gates_decisions_and_drop_the_terms_it_stopped(small, fast_cfg, teacher_val_acc):
    """``distill.while_teacher_leads`` records each validation's decision and the teacher's val accuracy (val lines,
    history); once it turns to plain steps the train lines and the history no longer show the SRL's terms."""
    teacher = Trainer(fast_cfg(**{"model.modality": "image+text", "name": "t"}), small).model
    gated = Trainer(fast_cfg(**{"name": "g", "distill.while_teacher_leads": True, "train.episodes": 60}), small,
                    teacher=teacher)
    gated.distiller.val_acc = teacher_val_acc  # a teacher every validation finds behind (0) or ahead of (1) its student
    history = gated.fit(progress=False, read_every=5)
    lines = [json.loads(line) for line in (gated.run_dir / "metrics.jsonl").read_text().splitlines()]
    leads, val = teacher_val_acc == 1.0, [v for v in lines if v["kind"] == "val"]
    assert [(v["distilling"], v["teacher_val_acc"]) for v in val] == [(leads, teacher_val_acc)] * 3
    assert [(h["distilling"], h["teacher_val_acc"]) for h in history] == [(leads, teacher_val_acc)] * 3
    train = [v for v in lines if v["kind"] == "train"]
    assert [v["step"] for v in train] == list(range(5, 61, 5))
    assert all("srl_rel" in v for v in train if v["step"] <= 20)  # every step distils until the first validation
    assert all(("srl_rel" in v) == leads for v in train if v["step"] > 20)
    assert ["srl_rel" in h for h in history] == [True, leads, leads]
    ungated = Trainer(fast_cfg(**{"name": "u", "train.episodes": 20}), small, teacher=teacher)
    assert "distilling" not in ungated.fit(progress=False)[0]


def test_running_means_continue_each_terms_mean_and_show_only_the_terms_just_produced():
    """The train lines' running losses: an exponential mean per term (weight 0.1 per step), shown while fresh."""
    running = RunningMeans()
    running.update([{"a": 1.0, "b": 2.0}, {"a": 3.0}])
    assert running.current() == pytest.approx({"a": 1.2, "b": 2.0})
    running.update([{"a": 5.0}])
    assert running.current() == pytest.approx({"a": 1.58})  # b produced nothing since the last read
    running.update([{"b": 4.0}])
    assert running.current() == pytest.approx({"b": 2.2})  # its mean goes on from where it stopped


def test_val_fine_grained_validates_on_episodes_from_one_group(small, fast_cfg):
    """``train.val_fine_grained``: every val episode's classes share a group (the default's span groups), and the
    validation, which picks the checkpoint and decides the plateau and the gate, scores those episodes."""
    fine, rand = (Trainer(fast_cfg(**{"train.val_fine_grained": on}), small) for on in (True, False))
    labels, groups = small.labels.numpy(), np.asarray(small.groups)

    def groups_per_episode(trainer: Trainer) -> set[int]:
        return {len(set(groups[labels[ep[:5]]])) for ep in trainer.val_episodes}  # the 5 supports' classes
    assert groups_per_episode(fine) == {1} and max(groups_per_episode(rand)) > 1
    scored, validated = evaluate_episodes(fine.model, fine.data, fine.val_episodes, 5, 1), fine.validate(fine.model)[0]
    assert validated == pytest.approx(scored.mean())
    assert validated != pytest.approx(rand.validate(fine.model)[0])
    alone = copy.copy(small)
    alone.groups = list(small.class_names)  # every class its own group
    with pytest.raises(ConfigError, match="no group of the val split has 5 classes.*train.val_fine_grained=false"):
        Trainer(fast_cfg(**{"train.val_fine_grained": True}), alone)


def test_an_srl_relating_fewer_queries_sees_the_sub_episode_of_each_classs_first_queries(small, fast_cfg):
    """``distill.srl.queries=2`` relates the supports and each class's first two queries: the terms of episodes
    drawn with two queries, from a second forward over those samples only (on the clean view)."""
    assert distiller.related_columns(5, 1, 5, 2).tolist() == [0, 1, 2, 3, 4, 5, 6, 10, 11, 15, 16, 20, 21, 25, 26]
    assert distiller.related_columns(5, 1, 5, 5) is None and distiller.related_columns(5, 1, 5, 0) is None
    teacher = Trainer(fast_cfg(**{"model.modality": "image+text", "name": "t"}), small).model
    cols = distiller.related_columns(5, 1, 5, 2)
    for view in ("clean", "same"):
        fewer = Trainer(fast_cfg(**{"name": "f", "distill.srl.queries": 2, "distill.srl.student_inputs": view}),
                        small, teacher=teacher)
        short = Trainer(fast_cfg(**{"name": "s", "episode.query": 2, "distill.srl.student_inputs": view}), small,
                        teacher=teacher)
        short.model.load_state_dict(fewer.model.state_dict())
        episodes = fewer.schedule.indices(0)
        n_ep = episodes.shape[0]
        flat = fewer.data.upload(episodes.reshape(-1))
        batches: list[int] = []

        def counted(images, *args, _forward=fewer.forward, _batches=batches, **kwargs):
            _batches.append(images.shape[0])
            return _forward(images, *args, **kwargs)
        with torch.no_grad():
            emb = fewer.model.embed(fewer.data.images_for(episodes.reshape(-1))).view(n_ep, 30, -1)
        fewer.forward = counted
        torch.manual_seed(0)
        got = fewer.distiller.terms(fewer.forward, fewer.model, episodes, flat, None, None, emb,
                                    fewer.model.scores(emb, 5, 1), augmented=True)
        assert batches == ([n_ep * 15] if view == "clean" else [])  # 5 supports and 2 queries of each class
        sub = emb[:, torch.as_tensor(cols)]
        torch.manual_seed(0)
        want = short.distiller.terms(short.forward, short.model, episodes[:, cols], flat.view(n_ep, -1)[:, cols]
                                     .flatten(), None, None, sub, short.model.scores(sub, 5, 1), augmented=True)
        assert set(got) == set(want) and all(torch.allclose(got[k], want[k], atol=1e-6) for k in got), view
    logs = fewer.train_step(0)
    assert all(torch.isfinite(v) for v in logs.values())
    kd = Trainer(fast_cfg(**{"name": "k", "distill.method": "kd"}), small, teacher=teacher)
    assert kd.distiller.columns is None  # KD relates the whole episode
    with pytest.raises(ConfigError, match=r"'distill.srl.queries' \(6\) is more than episode.query \(5\)"):
        fast_cfg(**{"distill.srl.queries": 6})


def test_init_encoder_starts_the_student_from_the_teachers_branch_of_its_modality(small, fast_cfg):
    teacher = Trainer(fast_cfg(**{"model.modality": "image+text", "name": "t"}), small).model
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.5)  # unlike any fresh initialisation
    for modality, branch in (("image", "image_encoder"), ("text", "text_encoder")):
        flags = {"name": f"s_{modality}", "model.modality": modality}
        plain = Trainer(fast_cfg(**flags), small, teacher=teacher).model
        warm = Trainer(fast_cfg(**flags, **{"distill.init_encoder": True}), small, teacher=teacher).model
        source = getattr(teacher, branch).state_dict()
        assert all(torch.equal(v, source[k]) for k, v in getattr(warm, branch).state_dict().items()), modality
        fresh = dict(getattr(plain, branch).named_parameters())
        assert not any(torch.equal(fresh[k], source[k]) for k in fresh), "without the flag the encoder starts fresh"
        assert all(torch.equal(a, b) for a, b in zip(warm.head.parameters(), plain.head.parameters()))
    wider = Trainer(fast_cfg(**{"model.modality": "image+text", "name": "w", "model.backbone": "resnet12"}),
                    small).model
    with pytest.raises(ConfigError, match=r"distill.init_encoder: the teacher's image encoder .*distill.init_encoder="
                                          r"false"):
        Trainer(fast_cfg(**{"name": "s", "distill.init_encoder": True}), small, teacher=wider)
    with pytest.raises(ConfigError, match=r"text encoder \(BagOfWords\) is not the student's \(.*size mismatch"):
        Trainer(fast_cfg(**{"name": "s", "model.modality": "text", "model.text_dim": 64, "distill.init_encoder": True}),
                small, teacher=teacher)  # same class, narrower: torch's strict load names the tensors
    image_only = Trainer(fast_cfg(**{"name": "i"}), small).model
    with pytest.raises(ConfigError, match="the teacher has no text encoder"):
        Trainer(fast_cfg(**{"name": "s", "model.modality": "text", "distill.init_encoder": True}), small,
                teacher=image_only)
    with pytest.raises(ConfigError, match=r"distill.init_encoder and --init both .* drop --init, or set "
                                          r"distill.init_encoder=false"):  # the init would be silently overwritten
        Trainer(fast_cfg(**{"name": "s", "distill.init_encoder": True}), small, teacher=teacher, init=image_only)


def test_device_data_mean_caption_embedding(small, fast_cfg):
    trainer = Trainer(fast_cfg(**{"model.modality": "text"}), small)
    data = DeviceData(small)
    idx = torch.arange(4)
    trainer.model.eval()
    table = inputs.caption_table(data, trainer.model)
    with torch.no_grad():
        each = torch.stack([inputs.embed(data, trainer.model, idx, caption_ids=table.sample_captions[idx, k])
                            for k in range(10)])  # the ten descriptions of each glyph, one at a time
        mean = inputs.embed(data, trainer.model, idx, all_captions=True)
    assert torch.allclose(each.mean(0), mean, atol=1e-5)  # a text student's embedding is their mean
    assert not torch.allclose(each[0], mean, atol=1e-3)


def test_teacher_with_minilm_text_encoder(glyphs, fast_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("CMKD_CACHE", str(tmp_path / "cache"))
    tiny = subset(glyphs, {"base": 30, "val": 10, "novel": 10}, per_class=6)  # MiniLM encodes every caption once
    trainer = Trainer(fast_cfg(**{"model.modality": "image+text", "model.text_encoder": "minilm",
                                  "model.fusion": "gated", "train.val_episodes": 4, "train.val_query": 3}), tiny)
    before = trainer.model.text_encoder.proj[0].weight.clone()
    logs = trainer.train_step(0)
    assert torch.isfinite(logs["loss"])
    assert not torch.equal(before, trainer.model.text_encoder.proj[0].weight)
