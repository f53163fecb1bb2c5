"""Several teachers as one (TeacherEnsemble): its scores, its refusals, and distillation from it."""

import json

import pytest
import torch

from cmkd import TeacherEnsemble
from cmkd.checkpoint import load_model, state_digest
from cmkd.cli import main
from cmkd.config import ModelConfig
from cmkd.errors import ConfigError
from cmkd.models.fewshot import FewShotModel

FAST = ["train.episodes=10", "train.val_every=10", "train.val_episodes=10", "train.val_query=3", "episode.query=3"]


def _members(head: str, n: int = 3, **changed) -> list[FewShotModel]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        out.append(FewShotModel(ModelConfig(modality="image", head=head, **(changed if seed else {})), 1, 32,
                                None).eval())
    return out


@pytest.mark.parametrize("head", ["protonet", "matchingnet", "relationnet", "feat"])
def test_an_ensemble_embeds_side_by_side_and_scores_by_the_mean_of_its_members(head):
    members = _members(head)
    ensemble = TeacherEnsemble(members).eval()
    way, shot, query = 5, 1, 2
    x = torch.randn(2, way * (shot + query), 1, 32, 32)
    with torch.no_grad():
        own = [m.embed(x.flatten(0, 1)).view(2, way * (shot + query), -1) for m in members]
        emb = ensemble.embed(x.flatten(0, 1)).view(2, way * (shot + query), -1)
        torch.testing.assert_close(emb, torch.cat(own, -1))
        scores = ensemble.scores(emb, way, shot)
        expected = sum(m.scores(e, way, shot) for m, e in zip(members, own)) / 3
        torch.testing.assert_close(scores, expected)
        labels = torch.tensor([3, 9, 1, 4, 7])
        logits = ensemble(x[0, :way], labels, x[0, way:])
        torch.testing.assert_close(logits, sum(m(x[0, :way], labels, x[0, way:]) for m in members) / 3)
    assert ensemble.out_dim == sum(m.out_dim for m in members)


def test_a_protonet_ensemble_is_protonet_on_the_concatenated_embeddings():
    """Mean of the members' squared distances = the squared distance on the concatenation / the member count,
    so the relations the SRL distils and the geometry its distance term sees agree."""
    members = _members("protonet", n=2)
    ensemble = TeacherEnsemble(members)
    emb = torch.randn(3, 5 * 4, 2 * members[0].out_dim)
    torch.testing.assert_close(ensemble.scores(emb, 5, 1) * 2, members[0].scores(emb, 5, 1))


def test_an_ensemble_of_different_models_is_refused_naming_what_differs():
    with pytest.raises(ConfigError, match=r"teacher 1 differs from teacher 0 in model\.head"):
        TeacherEnsemble([*_members("protonet", n=1), *_members("matchingnet", n=1)])
    with pytest.raises(ConfigError, match=r"teacher 1 differs from teacher 0 in model\.dropblock"):
        TeacherEnsemble(_members("protonet", n=2, dropblock=0.1))
    with pytest.raises(ConfigError, match="two or more"):
        TeacherEnsemble(_members("protonet", n=1))
    with pytest.raises(TypeError, match="not trained"):
        TeacherEnsemble(_members("protonet", n=2)).loss_terms(torch.zeros(1, 5, 5), torch.zeros(1, 10, 4), 5, 1)


@pytest.fixture(scope="module")
def two_teachers(tmp_path_factory):
    """Two image+text teachers of seeds 0 and 1, trained 10 episodes each (runs ``t0``, ``t1``)."""
    root = tmp_path_factory.mktemp("teachers")
    for seed in (0, 1):
        assert main(["train", "--modality", "image+text", "--name", f"t{seed}", f"out={root}", *FAST,
                     f"train.seed={seed}"]) == 0
    return root


def test_distill_from_comma_separated_teachers_learns_from_their_ensemble(two_teachers, capsys):
    tmp_path = two_teachers
    out = f"out={tmp_path}"
    teachers = f"{tmp_path / 't0'},{tmp_path / 't1'}"
    assert main(["distill", "--teacher", teachers, "--name", "s", out, *FAST]) == 0
    meta = json.loads((tmp_path / "s" / "best.json").read_text())
    single = [load_model(tmp_path / f"t{seed}")[0] for seed in (0, 1)]
    assert meta["teacher_sha256"] == state_digest(TeacherEnsemble(single))
    assert meta["teacher_sha256"] not in {state_digest(m) for m in single}
    assert meta["config"]["distill"]["teacher"] == teachers
    # a text student, the ensemble embedding each step's own inputs (sampled captions) instead of its cache
    assert main(["distill", "--teacher", teachers, "--modality", "text", "--name", "s_text", out, *FAST,
                 "distill.teacher_inputs=same"]) == 0
    capsys.readouterr()
    assert main(["distill", "--teacher", f"{tmp_path / 't0'},", "--name", "s2", out, *FAST]) == 2
    assert "has an empty name" in capsys.readouterr().err
    assert main(["distill", "--teacher", teachers, "--name", "s3", out, *FAST, "distill.init_encoder=true"]) == 2
    assert "an ensemble of teachers has one encoder per teacher" in capsys.readouterr().err
    assert main(["distill", "--name", "s4", out, *FAST, "distill.teacher=[a, b]"]) == 2
    assert "takes text, got ['a', 'b'] (path of a teacher run (or its checkpoint); several, comma-separated" in \
        capsys.readouterr().err


def test_evaluate_scores_plus_joined_runs_as_their_ensemble(two_teachers, tmp_path, capsys):
    t0, t1 = (str(two_teachers / f"t{seed}") for seed in (0, 1))
    result = tmp_path / "eval.json"
    assert main(["evaluate", f"self={t0}+{t0}", f"single={t0}", f"pair={t0}+{t1}", "--episodes", "20",
                 "--shots", "1", "--query", "3", "--out", str(result)]) == 0
    scores = json.loads(result.read_text())
    acc = scores["settings"][0]["per_episode"]
    assert acc["self"] == acc["single"]  # the mean of a model's scores with themselves is its scores
    assert acc["pair"] != acc["single"]
    assert scores["checkpoints"]["pair[0]"].count("+") == 1
    capsys.readouterr()
    assert main(["evaluate", f"{t0}+", "--episodes", "5", "--out", str(result)]) == 2
    assert "has an empty name (a stray '+')" in capsys.readouterr().err
