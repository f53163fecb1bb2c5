import pytest

from cmkd.cli import main
from cmkd.config import load_config
from cmkd.errors import ConfigError


def test_unknown_key_names_the_key_and_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.lrr' \(did you mean 'train\.lr'\?\)"):
        load_config(overrides=["train.lrr=0.1"])


def test_yaml_file_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.01\nepisode:\n  shot: 5\n")
    cfg = load_config(f, ["episode.shot=1", "model.modality=image+text"])
    assert cfg.train.lr == 0.01 and cfg.episode.shot == 1 and cfg.model.modality == "image+text"
    bad = tmp_path / "bad.yaml"
    bad.write_text("trian:\n  lr: 0.01\n")
    with pytest.raises(ConfigError, match="unknown config key 'trian'"):
        load_config(bad)


def test_bad_values_are_named():
    with pytest.raises(ConfigError, match="model.modality"):
        load_config(overrides=["model.modality=sound"])
    with pytest.raises(ConfigError, match="train.episodes' takes a number"):
        load_config(overrides=["train.episodes=many"])


def test_cli_unknown_key_exits_2(capsys, tmp_path):
    assert main(["train", f"out={tmp_path}", "train.epsiodes=5"]) == 2
    assert "unknown config key 'train.epsiodes'" in capsys.readouterr().err


def test_cli_way_larger_than_classes(capsys, tmp_path):
    assert main(["train", f"out={tmp_path}", "episode.way=5000"]) == 2
    assert "way=5000 is larger than the" in capsys.readouterr().err


def test_cli_shot_plus_query_larger_than_a_class(capsys, tmp_path):
    assert main(["train", f"out={tmp_path}", "episode.shot=30", "episode.query=30"]) == 2
    err = capsys.readouterr().err
    assert "shot+query=60" in err and "lower the shot or the queries" in err


def test_cli_missing_config_file(capsys, tmp_path):
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_messages_go_to_the_stderr_of_the_moment(capsys):
    """The CLI's log handler is installed once; a later main() with another stderr still gets the messages."""
    import logging

    from cmkd.cli import _show_messages

    _show_messages()
    capsys.readouterr()
    logging.getLogger("cmkd").info("a message from cmkd")
    assert "a message from cmkd" in capsys.readouterr().err


def test_cli_messages_print_on_their_own_line_above_a_progress_bar(capsys):
    """A warning mid-run clears the bar's line first (a plain stream handler would glue it to the bar)."""
    import logging
    import sys

    from tqdm import tqdm

    from cmkd.cli import _show_messages

    _show_messages()
    capsys.readouterr()
    with tqdm(total=10, file=sys.stderr, ncols=60, mininterval=0) as bar:
        bar.update(3)
        logging.getLogger("cmkd").warning("validation at episode 30 is not above chance")
        bar.update(1)
    err = capsys.readouterr().err
    line = next(part for part in err.split("\n") if "not above chance" in part)
    assert line.rsplit("\r", 1)[-1].lstrip(" ").startswith("validation at episode 30"), repr(line)
    assert "3/10" in err and "4/10" in err.split("not above chance")[1], "the bar is drawn before and after"
