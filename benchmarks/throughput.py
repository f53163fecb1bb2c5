"""Training and evaluation throughput: the cmkd pipeline against a conventional episodic loader.

(a) cmkd: the prepared uint8 images live on the device; an episode is an index tensor; gather,
    conversion and augmentation run there; evaluation embeds each needed image once.
(b) conventional: the same images stored as JPEG files, decoded and resized with PIL in a
    torch DataLoader with worker processes and a batch sampler of episodes; evaluation runs
    episode by episode.

Both train the same model on the same episodes in the same run, so the ratio is meaningful on a
shared machine even when absolute numbers drift. Also measured: the data share of a cmkd step
(sampling + gather + augmentation), the cost of a distillation step relative to a plain one, and
peak memory. Writes JSON and prints a table. Usage:

    .venv/bin/python benchmarks/throughput.py --out benchmarks/results/throughput_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cmkd.config import load_config
from cmkd.data.augment import random_affine, to_float
from cmkd.data.dataset import FewShotDataset
from cmkd.data.episodes import EpisodeSampler, episode_labels
from cmkd.data.formats.glyphs import load_glyphs
from cmkd.eval.evaluate import evaluate_episodes
from cmkd.runtime import configure_cpu
from cmkd.train.loop import Trainer


def resized_subset(ds: FewShotDataset, classes: int, per_class: int, size: int) -> FewShotDataset:
    """The first ``classes`` base classes at ``size`` x ``size`` RGB (like a prepared photo dataset)."""
    keep = ds.split_classes("base")[:classes]
    labels = ds.labels.numpy()
    idx = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in keep])
    imgs = torch.nn.functional.interpolate(ds.images[idx].float(), size=(size, size), mode="bilinear")
    imgs = imgs.clamp(0, 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    remap = {c: i for i, c in enumerate(keep)}
    n = len(keep)
    splits = {"base": list(range(n)), "val": list(range(n)), "novel": list(range(n))}
    return FewShotDataset("bench", imgs, torch.tensor([remap[int(c)] for c in labels[idx]]),
                          [ds.class_names[c] for c in keep], [ds.groups[c] for c in keep],
                          [ds.captions[i] for i in idx], splits)


class JpegEpisodes(torch.utils.data.Dataset):
    """The conventional pipeline: one JPEG per image, decoded and resized by PIL per access."""

    def __init__(self, files: list[Path], size: int) -> None:
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.files[i]) as img:
            arr = np.array(img.convert("RGB").resize((self.size, self.size), Image.BILINEAR), dtype=np.uint8)
        return torch.from_numpy(arr).permute(2, 0, 1)


class EpisodeBatches(torch.utils.data.Sampler):
    def __init__(self, sampler: EpisodeSampler, seed: int, count: int) -> None:
        self.sampler, self.seed, self.count = sampler, seed, count

    def __iter__(self):
        for i in range(self.count):
            yield self.sampler.episode(self.seed, i).indices.tolist()

    def __len__(self) -> int:
        return self.count


def write_jpegs(ds: FewShotDataset, root: Path, source_size: int = 128) -> list[Path]:
    files = []
    for i, img in enumerate(ds.images):
        path = root / f"{i:06d}.jpg"
        Image.fromarray(img.permute(1, 2, 0).numpy()).resize((source_size, source_size)).save(path, quality=90)
        files.append(path)
    return files


def bench_setting(ds: FewShotDataset, files: list[Path], backbone: str, shot: int, episodes: int,
                  workers: int) -> dict:
    size = ds.image_shape[1]
    cfg = load_config(base={"out": tempfile.mkdtemp(), "name": "bench", "model.backbone": backbone,
                            "data.image_size": size, "episode.shot": shot, "episode.query": 15,
                            "train.val_episodes": 2, "train.val_query": 1})
    way = cfg.episode.way
    trainer = Trainer(cfg, ds)
    sampler = trainer.samplers[0]
    model, opt = trainer.model, trainer.optimizer
    truth = episode_labels(way, 15)

    def step(images: torch.Tensor) -> None:
        emb = model.embed(images).view(1, images.shape[0], -1)
        loss = model.loss(model.scores(emb, way, shot), emb, way, shot)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # (a) cmkd: time the data part and the whole step separately
    trainer.train_step(0)  # warm-up
    data_t = total_t = 0.0
    for s in range(1, episodes + 1):
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(s)
        idx = torch.as_tensor(sampler.episode(0, s).indices)
        x = random_affine(to_float(trainer.data.images[idx]), gen)
        t1 = time.perf_counter()
        step(x)
        t2 = time.perf_counter()
        data_t += t1 - t0
        total_t += t2 - t0
    cmkd_train = episodes / total_t

    # (b) conventional: DataLoader with workers and a batch sampler of episodes, same model and episodes
    loader = torch.utils.data.DataLoader(JpegEpisodes(files, size), num_workers=workers,
                                         batch_sampler=EpisodeBatches(sampler, 0, episodes + 1))
    it = iter(loader)
    step(random_affine(to_float(next(it)), torch.Generator().manual_seed(0)))  # warm-up (workers started)
    t0 = time.perf_counter()
    for s, batch in enumerate(it, 1):
        step(random_affine(to_float(batch), torch.Generator().manual_seed(s)))
    conv_train = episodes / (time.perf_counter() - t0)

    # evaluation: cmkd embeds the needed images once; the conventional loader decodes per episode
    eval_eps = sampler.fixed(episodes * 4, 99)
    model.eval()
    with torch.no_grad():
        t0 = time.perf_counter()
        evaluate_episodes(model, trainer.data, eval_eps, way, shot)
        cmkd_eval = len(eval_eps) / (time.perf_counter() - t0)
        loader = torch.utils.data.DataLoader(JpegEpisodes(files, size), num_workers=workers,
                                             batch_sampler=[row.tolist() for row in eval_eps[:episodes]])
        t0 = time.perf_counter()
        for batch in loader:
            emb = model.embed(to_float(batch)).view(1, batch.shape[0], -1)
            (model.scores(emb, way, shot).argmax(-1) == truth).float().mean()
        conv_eval = episodes / (time.perf_counter() - t0)
    model.train()
    return {"backbone": backbone, "image_size": size, "way": way, "shot": shot, "query": 15,
            "timed_train_episodes": episodes, "cmkd_train_eps": cmkd_train, "conventional_train_eps": conv_train,
            "train_ratio": cmkd_train / conv_train, "data_share_of_cmkd_step": data_t / total_t,
            "cmkd_eval_eps": cmkd_eval, "conventional_eval_eps": conv_eval, "eval_ratio": cmkd_eval / conv_eval}


def bench_distill(ds: FewShotDataset, episodes: int) -> dict:
    """A plain student step vs a distillation step (cached and live teacher), same episodes."""
    size = ds.image_shape[1]
    base = {"out": tempfile.mkdtemp(), "data.image_size": size, "train.val_episodes": 2, "train.val_query": 1,
            "episode.query": 15}
    teacher = Trainer(load_config(base={**base, "name": "t", "model.modality": "image+text"}), ds).model.eval()
    out = {}
    for name, extra, t in (("plain", {}, None), ("distill_cached_teacher", {}, teacher),
                           ("distill_live_teacher", {"distill.teacher_inputs": "same"}, teacher)):
        tr = Trainer(load_config(base={**base, **extra, "name": name}), ds, teacher=t)
        tr.train_step(0)
        t0 = time.perf_counter()
        for s in range(1, episodes + 1):
            tr.train_step(s)
        out[name] = (time.perf_counter() - t0) / episodes
    return {"seconds_per_step": out, "cached_over_plain": out["distill_cached_teacher"] / out["plain"],
            "live_over_plain": out["distill_live_teacher"] / out["plain"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=20, help="timed training episodes per Conv-4 setting")
    ap.add_argument("--resnet-episodes", type=int, default=2, help="ResNet-12 at 84px is slow on a CPU")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/throughput_cpu.json"))
    args = ap.parse_args()
    threads = configure_cpu()
    glyphs = load_glyphs(32)
    rows = []
    for size, settings in ((84, [("conv4", 1, args.episodes), ("conv4", 5, args.episodes),
                                 ("resnet12", 1, args.resnet_episodes)]),
                           (32, [("conv4", 1, args.episodes), ("conv4", 5, args.episodes)])):
        ds = resized_subset(glyphs, args.classes, args.per_class, size)
        with tempfile.TemporaryDirectory() as tmp:
            files = write_jpegs(ds, Path(tmp))
            for backbone, shot, n in settings:
                if n <= 0:
                    print(f"skipped {backbone} {size}px: --resnet-episodes 0")
                    continue
                row = bench_setting(ds, files, backbone, shot, n, args.workers)
                rows.append(row)
                print(f"{backbone} {size}px {shot}-shot: train {row['cmkd_train_eps']:.2f} vs "
                      f"{row['conventional_train_eps']:.2f} eps/s (x{row['train_ratio']:.2f}), data share "
                      f"{100 * row['data_share_of_cmkd_step']:.1f}%, eval {row['cmkd_eval_eps']:.1f} vs "
                      f"{row['conventional_eval_eps']:.1f} eps/s (x{row['eval_ratio']:.1f})", flush=True)
    distill = bench_distill(resized_subset(glyphs, args.classes, args.per_class, 32), args.episodes)
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                          "torch": torch.__version__, "threads": threads, "device": "cpu",
                          "dataloader_workers": args.workers},
              "dataset": f"glyphs, {args.classes} base classes x {args.per_class} images, replicated to RGB, "
                         "JPEG files at 128px for the conventional pipeline",
              "settings": rows, "distillation_step": distill,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print("\n| backbone | size | shot | cmkd train eps/s | conventional | ratio | data share | cmkd eval eps/s "
          "| conventional | ratio |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backbone']} | {r['image_size']} | {r['shot']} | {r['cmkd_train_eps']:.2f} | "
              f"{r['conventional_train_eps']:.2f} | {r['train_ratio']:.2f} | "
              f"{100 * r['data_share_of_cmkd_step']:.1f}% | {r['cmkd_eval_eps']:.1f} | "
              f"{r['conventional_eval_eps']:.1f} | {r['eval_ratio']:.1f} |")
    d = distill["seconds_per_step"]
    print(f"\ndistillation step / plain step (Conv-4 32px 1-shot): cached teacher {distill['cached_over_plain']:.2f}, "
          f"live teacher {distill['live_over_plain']:.2f} ({d})")
    print(f"peak RSS {result['peak_rss_mb']:.0f} MB; {args.out}")


if __name__ == "__main__":
    main()
