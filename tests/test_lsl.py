"""Language-shaped learning (Mu et al., ACL 2020): the caption decoder, its training, its absence at test time."""

import json
import math

import numpy as np
import torch

from cmkd.checkpoint import load_checkpoint, load_model, model_state
from cmkd.cli import main
from cmkd.data.episodes import EpisodeSetting
from cmkd.data.text import Vocab
from cmkd.eval.evaluate import episode_list, evaluate_episodes
from cmkd.models.caption_decoder import BOS, EOS, CaptionDecoder
from cmkd.train.loop import Trainer

VOCAB = Vocab(["a", "mark", "letter"])  # ids: <pad> 0, <unk> 1, a 2, mark 3, letter 4


def test_tokens_start_with_bos_and_end_with_eos():
    dec = CaptionDecoder(VOCAB, in_dim=3)
    words = torch.tensor([[2, 3, 0], [4, 1, 2]])  # "a mark", "letter <unk> a"
    assert dec.tokens(words).tolist() == [[BOS, 4, 5, EOS, 0], [BOS, 6, 1, 4, EOS]]


def test_decoder_loss_equals_a_hand_computation():
    torch.manual_seed(0)
    dec = CaptionDecoder(VOCAB, in_dim=3, hidden=4, word_dim=2)
    emb = torch.randn(2, 3)
    words = torch.tensor([[2, 3, 0], [4, 0, 0]])
    g = dec.gru
    total, count = 0.0, 0
    for b, seq in enumerate(dec.tokens(words).tolist()):
        h = torch.tanh(dec.init.weight @ emb[b] + dec.init.bias)
        for t in range(len(seq) - 1):
            if seq[t + 1] == 0:
                break
            x = dec.embed.weight[seq[t]]
            gi, gh = g.weight_ih_l0 @ x + g.bias_ih_l0, g.weight_hh_l0 @ h + g.bias_hh_l0
            r = torch.sigmoid(gi[:4] + gh[:4])
            z = torch.sigmoid(gi[4:8] + gh[4:8])
            n = torch.tanh(gi[8:] + r * gh[8:])
            h = (1 - z) * n + z * h
            logits = dec.out.weight @ h + dec.out.bias
            total -= torch.log_softmax(logits, 0)[seq[t + 1]].item()
            count += 1
    assert count == 3 + 2  # "a mark" EOS, "letter" EOS
    assert math.isclose(dec(emb, words).item(), total / count, rel_tol=1e-5)


def test_lsl_trains_the_decoder_and_the_student_is_evaluated_without_it(small, fast_cfg):
    cfg = fast_cfg(**{"lsl.weight": 2.0, "train.episodes": 30, "train.val_every": 30})
    trainer = Trainer(cfg, small)
    logs = [trainer.train_step(s)["lsl"].item() for s in range(30)]
    assert np.mean(logs[-5:]) < np.mean(logs[:5]), "the caption loss falls"
    trainer.state.progress.step = 30
    trainer.state.save(best=True)
    tensors, meta = load_checkpoint(trainer.run_dir / "best.json")
    assert any(k.startswith("lsl.") for k in tensors) and not any(k.startswith("lsl.") for k in model_state(tensors))
    model, _ = load_model(trainer.run_dir)
    assert not hasattr(model, "decoder") and set(model.state_dict()) == set(trainer.model.state_dict())
    eps = episode_list(trainer.data, "novel", EpisodeSetting(5, 1, 5, False), 20, 0)
    trainer.model.eval()
    assert np.array_equal(evaluate_episodes(model, trainer.data, eps, 5, 1),
                          evaluate_episodes(trainer.model, trainer.data, eps, 5, 1))


def test_lsl_from_the_command_line_with_and_without_a_teacher(tmp_path):
    fast = [f"out={tmp_path}", "train.episodes=6", "train.val_every=6", "train.val_episodes=4", "train.val_query=2",
            "episode.query=2"]
    assert main(["train", "--name", "lsl", "lsl.weight=5", *fast]) == 0
    lines = [json.loads(x) for x in (tmp_path / "lsl" / "metrics.jsonl").read_text().splitlines()]
    assert any("lsl" in x for x in lines if x["kind"] == "train")
    assert main(["train", "--name", "t", "--modality", "image+text", *fast]) == 0
    assert main(["distill", "--teacher", str(tmp_path / "t"), "--name", "srl_lsl", "lsl.weight=5", "lsl.hidden=16",
                 "lsl.word_dim=8", *fast]) == 0
    meta = json.loads((tmp_path / "srl_lsl" / "best.json").read_text())
    assert meta["config"]["lsl"]["weight"] == 5 and meta["config"]["distill"]["method"] == "srl"
    tensors, _ = load_checkpoint(tmp_path / "srl_lsl" / "best.json")  # the decoder has the configured sizes
    assert tuple(tensors["lsl.gru.weight_hh_l0"].shape) == (3 * 16, 16) and tensors["lsl.embed.weight"].shape[1] == 8
