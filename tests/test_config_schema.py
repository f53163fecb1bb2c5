"""The config is its own schema: types, unread keys, renamed keys and the resume rules come from the
dataclass fields' metadata (issue cases B1-B3 of the bad-input review included)."""

import dataclasses

import matplotlib
import pytest
import torch

from cmkd.cli import main
from cmkd.config import Config, field_help, load_config, resume_conflicts, schema, upgrade
from cmkd.errors import ConfigError


@pytest.mark.parametrize("override, message", [
    ("train.episodes=true", "'train.episodes' takes a whole number, got True"),  # B1
    ("episode.shot=true", "'episode.shot' takes a whole number, got True"),
    ("train.lr=null", "'train.lr' takes a number, got null"),
    ("train.episodes=2.5", "'train.episodes' takes a whole number, got 2.5"),
    ("data.augment=1", "'data.augment' takes true or false, got 1"),
    ("name=12345", "'name' takes text, got 12345"),
    ("distill.teacher=[a, b]", "'distill.teacher' takes text, got"),  # W13: optional, but text when set
    ("train.seed=18446744073709551616", "'train.seed' must be at least 0 and at most 2147483647"),  # W3
    ("train.threads=4294967296", "'train.threads' must be at least 0 and at most 1024"),  # W4
    ("model.embed_dim=10000000000", "'model.embed_dim' must be at least 1 and at most 65536"),  # W8
    ("train.lr=[0.1", "override 'train.lr=[0.1': the value is not a YAML scalar"),  # W11
    ("episode.fine_grained=true", "does not exist: training draws fine-grained episodes with "
                                  "train.fine_grained_share"),  # B2
    ("distill.tau=2", "config key 'distill.tau' is now 'distill.srl.tau'; rename it"),
    ("distill.kd_tau=2", "config key 'distill.kd_tau' is now 'distill.kd.tau'"),
])
def test_wrong_types_ranges_and_old_keys_are_refused_by_name(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert message in str(err.value)


def test_numbers_as_yaml_text_still_parse():
    cfg = load_config(overrides=["train.lr=1e-3", "train.episodes=300"])  # YAML 1.1 reads 1e-3 as text
    assert cfg.train.lr == 0.001 and isinstance(cfg.train.episodes, int) and cfg.distill.teacher is None


def test_a_key_the_method_does_not_read_is_refused_naming_the_method_that_would():
    with pytest.raises(ConfigError, match=r"'distill\.srl\.tau' is read only when distill\.method is srl "
                                          r"\(it is 'kd'\)"):
        load_config(overrides=["distill.method=kd", "distill.srl.tau=2"], command="distill")
    with pytest.raises(ConfigError, match=r"'distill\.kd\.tau' is read only when distill\.method is kd"):
        load_config(overrides=["distill.kd.tau=2"], command="distill")
    cfg = load_config(overrides=["distill.method=kd", "distill.kd.tau=2"], command="distill")
    assert cfg.distill.kd.tau == 2.0 and cfg.distill.srl.tau == 1.0


def test_train_refuses_a_distill_section_and_the_trainer_refuses_a_missing_teacher(tmp_path, capsys, small):
    """B3: `cmkd train` with a teacher configured used to train a plain student recorded as a distillation."""
    rc = main(["train", "--config", "glyphs_distill", "--name", "x", f"out={tmp_path}", "distill.teacher=runs/T"])
    assert rc == 2 and "is read only by `cmkd distill`" in capsys.readouterr().err
    assert not (tmp_path / "x").exists(), "nothing was written"
    from cmkd.train.loop import Trainer

    with pytest.raises(ConfigError, match="distill.teacher is set"):
        Trainer(load_config(overrides=["distill.teacher=runs/T", f"out={tmp_path}"]), small)


def test_model_keys_for_the_other_direction_are_allowed():
    """One config serves both directions (--modality): text keys in an image student's config are kept."""
    cfg = load_config("cub/conv4_student")
    assert cfg.model.modality == "image" and cfg.model.text_encoder == "bigru"


def test_every_key_has_help_and_the_schema_drives_config_keys():
    help_ = field_help()
    assert list(help_) == list(schema()) and all(text for _, text in help_.values())
    assert "one of protonet: Prototypical Networks (Snell et al. 2017); matchingnet:" in help_["model.head"][1]
    assert "one of auto, fp32, bf16, fp16" in help_["train.precision"][1]
    assert "read when command in distill and distill.method in srl" in help_["distill.srl.tau"][1]
    assert all(isinstance(k.default, k.type if isinstance(k.type, type) else object) for k in schema().values())


def test_resume_rules_come_from_the_schema_and_old_run_configs_are_upgraded():
    old = Config().to_dict()
    old["distill"] = {**{k: v for k, v in old["distill"].items() if k not in ("srl", "kd", "rkd")},
                      "tau": 1.0, "kd_tau": 4.0, "rel": 1.0, "dist": 1.0, "angle": 0.0, "standardise": "episode",
                      "correct_only": False, "student_inputs": "clean"}  # a run folder written before the rename
    old["episode"]["fine_grained"] = False
    assert upgrade(old) == Config().to_dict()
    assert resume_conflicts(old, Config().to_dict()) == []
    grown = dataclasses.replace(Config(), train=dataclasses.replace(Config().train, episodes=3000, threads=1))
    assert resume_conflicts(old, grown.to_dict()) == []  # episodes may grow, threads may change
    shrunk = dataclasses.replace(Config(), train=dataclasses.replace(Config().train, episodes=10, lr=0.5))
    assert resume_conflicts(old, shrunk.to_dict()) == ["train.episodes: 1500 -> 10 (it may only grow)",
                                                      "train.lr: 0.001 -> 0.5"]


def test_the_library_leaves_process_state_as_it_was(small, fast_cfg, tmp_path):
    """No global RNG reseeding, no matplotlib backend switch, no environment writes, the caller's
    teacher untouched (a training run and its plots included)."""
    import os

    from cmkd.train.loop import Trainer

    warm = torch.nn.Linear(2, 2)  # torch's first optimizer step sets TORCHINDUCTOR_CACHE_DIR itself: not cmkd's
    torch.optim.Adam(warm.parameters()).step()
    backend, env = matplotlib.get_backend(), dict(os.environ)
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    teacher = Trainer(fast_cfg(**{"name": "t", "model.modality": "image+text", "train.episodes": 4,
                                  "train.val_every": 2}), small)
    teacher.fit(progress=False)
    student = Trainer(fast_cfg(**{"name": "s", "train.episodes": 2}), small, teacher=teacher.model)
    student.train_step(0)
    assert torch.equal(torch.rand(3), expected), "the caller's RNG stream continues as if cmkd had not run"
    assert matplotlib.get_backend() == backend and dict(os.environ) == env
    assert teacher.model.training and all(p.requires_grad for p in teacher.model.parameters())
    assert (tmp_path / "t" / "val_curve.png").stat().st_size > 0
