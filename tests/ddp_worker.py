"""Started by tests/test_distributed.py under ``torchrun``: a short 2-rank training (or, with
``distill NAME [resume]``, a distillation from ``OUT/teacher``) on a glyph subset; every rank writes a
digest of its final weights and its first episodes."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from cmkd import distributed  # noqa: E402
from cmkd.config import load_config  # noqa: E402
from cmkd.data.formats.glyphs import load_glyphs  # noqa: E402
from cmkd.train.loop import Trainer  # noqa: E402
from conftest import subset  # noqa: E402

WORKER_CONFIG = {"name": "ddp", "train.episodes": 16, "train.episodes_per_step": 2, "train.val_every": 8,
                 "train.val_episodes": 10, "episode.query": 5, "train.threads": 1, "train.fine_grained_share": 0.5,
                 "train.pretrain_epochs": 1, "train.pretrain_batch": 256}
WORKER_SUBSET = {"base": 60, "val": 20, "novel": 20}


def main(out: Path, mode: str = "train", name: str = "ddp", resume: bool = False) -> None:
    device = distributed.setup("cpu")
    dataset = subset(load_glyphs(32), WORKER_SUBSET, per_class=24)
    if mode == "distill":
        from cmkd.checkpoint import load_model

        teacher = load_model(out / "teacher", device)[0]
        cfg = load_config(base={**WORKER_CONFIG, "out": str(out), "name": name, "train.pretrain_epochs": 0,
                                "distill.teacher": str(out / "teacher")}, command="distill")
        trainer = Trainer(cfg, dataset, device, teacher=teacher)
    else:
        trainer = Trainer(load_config(base={**WORKER_CONFIG, "out": str(out)}), dataset, device)
    trainer.fit(progress=False, resume=resume)
    digest = hashlib.sha256()
    for key, tensor in sorted(trainer.model.state_dict().items()):
        digest.update(key.encode() + tensor.detach().contiguous().numpy().tobytes())
    rank = trainer.ranks.rank
    (out / f"{name}_rank{rank}.json").write_text(json.dumps({
        "world": trainer.ranks.world, "steps": trainer.schedule.steps, "digest": digest.hexdigest(),
        "episodes_step0": trainer.schedule.indices(0).tolist(), "val": [h["val_acc"] for h in trainer.history]}))
    distributed.teardown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:4], resume=sys.argv[4:5] == ["resume"])
