"""Training and evaluation throughput: the cmkd pipeline against a conventional episodic loader.

(a) cmkd: the prepared uint8 images live on the device; an episode is an index tensor; gather,
    conversion and augmentation run there; evaluation embeds each needed image once.
(b) conventional: the same images stored as JPEG files, decoded and resized with PIL in a
    torch DataLoader with worker processes and a batch sampler of episodes; evaluation runs
    episode by episode.

Both train the same model on the same episodes in the same run, so the ratio is meaningful on a
shared machine even when absolute numbers drift. Also measured: the data share of a cmkd step
(sampling + gather + augmentation), the host placement (images memory-mapped on the host, copied
per step, prefetched), the cost of a distillation step relative to a plain one, peak host RSS and
peak device memory. Writes JSON and prints a table. Usage:

    .venv/bin/python benchmarks/throughput.py --out benchmarks/results/throughput_cpu.json
    bash benchmarks/gpu.sh        # the GPU part, about 5 minutes on an H100/H200
"""

from __future__ import annotations

import argparse
import dataclasses
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
from cmkd.files import write_atomic
from cmkd.runtime import autocast, configure_cpu, pick_device
from cmkd.train.forward import EpisodeForward
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
            arr = np.array(img.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR), dtype=np.uint8)
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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_device_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def timed_steps(trainer: Trainer, first: int, steps: int) -> float:
    """Seconds for ``steps`` full training steps (sampling, gather, augmentation, forward, backward)."""
    sync(trainer.device)
    t0 = time.perf_counter()
    for s in range(first, first + steps):
        trainer.train_step(s)
    sync(trainer.device)
    return time.perf_counter() - t0


def bench_setting(ds: FewShotDataset, files: list[Path], backbone: str, shot: int, episodes: int, args) -> dict:
    size, device = ds.image_shape[1], args.device
    per_step, warm = args.episodes_per_step, args.warmup
    base = {"out": args.scratch, "name": "bench", "model.backbone": backbone, "data.image_size": size,
            "episode.shot": shot, "episode.query": 15, "train.val_episodes": 2, "train.val_query": 1,
            "train.episodes_per_step": per_step, "train.precision": args.precision, "train.compile": args.compile}
    cfg = load_config(base={**base, "data.placement": "device"})
    way = cfg.episode.way
    trainer = Trainer(cfg, ds, device)
    steps = max(1, episodes // per_step)

    # (a) cmkd: the trainer's own step; the compile (if any) happens in the warm-up
    t0 = time.perf_counter()
    timed_steps(trainer, 0, warm)
    warm_seconds = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_t = timed_steps(trainer, warm, steps)
    cmkd_train = steps * per_step / train_t
    peak_mb = peak_device_mb(device)
    # the data part alone on the same steps: sampling, gather, conversion, augmentation
    sync(device)
    t0 = time.perf_counter()
    for s in range(warm, warm + steps):
        gen = torch.Generator(device=device).manual_seed(s)
        trainer.data.images_for(trainer.schedule.indices(s).reshape(-1), True, gen)
    sync(device)
    data_t = time.perf_counter() - t0
    # the host placement: images stay in a memory map of a prepared cache, gathered per step, prefetched
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "images.npy", ds.images.numpy())
        mapped = dataclasses.replace(ds, images=torch.from_numpy(np.load(Path(tmp) / "images.npy", mmap_mode="c")))
        host = Trainer(load_config(base={**base, "data.placement": "host", "train.compile": False}), mapped, device)
        timed_steps(host, 0, warm)
        host_train = steps * per_step / timed_steps(host, warm, steps)
        del host, mapped

    # (b) conventional: JPEG files decoded by PIL in DataLoader workers, one episode per batch
    forward = EpisodeForward(trainer.model, trainer.objective, way, shot, trainer.precision, device)
    opt = trainer.optimizer

    def step(batch: torch.Tensor, s: int) -> None:
        x = random_affine(to_float(batch.to(device, non_blocking=True)), torch.Generator(device).manual_seed(s))
        loss = trainer.objective(forward(x, None, 1)[2])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    n_conv = args.conventional_episodes or episodes
    loader = torch.utils.data.DataLoader(JpegEpisodes(files, size), num_workers=args.workers,
                                         batch_sampler=EpisodeBatches(trainer.schedule.samplers[0], 0, n_conv + warm),
                                         pin_memory=device.type == "cuda", persistent_workers=False)
    it = iter(loader)
    for s in range(warm):  # workers started, first batches decoded
        step(next(it), s)
    sync(device)
    t0 = time.perf_counter()
    for s, batch in enumerate(it, warm):
        step(batch, s)
    sync(device)
    conv_train = n_conv / (time.perf_counter() - t0)

    # evaluation: cmkd embeds the needed images once; the conventional loader decodes per episode
    eval_eps = trainer.schedule.samplers[0].fixed(4 * episodes, 99)
    truth = episode_labels(way, 15, device)
    model = trainer.model.eval()
    with torch.no_grad():
        sync(device)
        t0 = time.perf_counter()
        evaluate_episodes(model, trainer.data, eval_eps, way, shot, precision=trainer.precision)
        sync(device)
        cmkd_eval = len(eval_eps) / (time.perf_counter() - t0)
        loader = torch.utils.data.DataLoader(JpegEpisodes(files, size), num_workers=args.workers,
                                             batch_sampler=[row.tolist() for row in eval_eps[:n_conv]],
                                             pin_memory=device.type == "cuda")
        t0 = time.perf_counter()
        for batch in loader:
            with autocast(trainer.precision, device):
                emb = model.embed(to_float(batch.to(device, non_blocking=True))).float()
            (model.scores(emb.view(1, batch.shape[0], -1), way, shot).argmax(-1) == truth).float().mean().item()
        conv_eval = min(n_conv, len(eval_eps)) / (time.perf_counter() - t0)
    model.train()
    return {"backbone": backbone, "image_size": size, "way": way, "shot": shot, "query": 15,
            "episodes_per_step": per_step, "precision": trainer.precision, "compile": args.compile,
            "timed_train_episodes": steps * per_step, "warmup_seconds": warm_seconds,
            "cmkd_train_eps": cmkd_train, "host_placement_train_eps": host_train,
            "conventional_train_eps": conv_train, "train_ratio": cmkd_train / conv_train,
            "data_share_of_cmkd_step": data_t / train_t, "peak_device_mb": peak_mb,
            "cmkd_eval_eps": cmkd_eval, "conventional_eval_eps": conv_eval, "eval_ratio": cmkd_eval / conv_eval}


#: distillation variants timed against a plain student step: name -> (config overrides, with the teacher)
DISTILL_VARIANTS: dict[str, tuple[dict[str, object], bool]] = {
    "plain": ({}, False),
    "distill_cached_teacher": ({}, True),
    "distill_cached_every_4": ({"distill.every": 4}, True),
    "distill_cached_same_view": ({"distill.srl.student_inputs": "same"}, True),
    "distill_live_teacher": ({"distill.teacher_inputs": "same"}, True),
    "distill_live_same_view": ({"distill.teacher_inputs": "same", "distill.srl.student_inputs": "same"}, True),
    "plain_unaugmented": ({"data.augment": False}, False),
    "distill_unaugmented": ({"data.augment": False}, True),  # an image student's clean view is its training view
    "distill_queries_3": ({"distill.srl.queries": 3}, True),  # the clean view of the supports and 3 queries a class
    "distill_queries_1": ({"distill.srl.queries": 1}, True),  # ... and 1 query a class
    # every 2nd step distils, on the clean images, in one forward (image students only)
    "distill_clean_steps_2": ({"distill.every": 2, "distill.clean_steps": True}, True),
}


def timed_variant(extra: dict, query: int, modality: str) -> bool:
    """Whether a variant applies: one relating K queries a class needs episodes of more than K; clean steps need
    an image student."""
    return extra.get("distill.srl.queries", 0) < query and (modality == "image" or "distill.clean_steps" not in extra)


def bench_distill(ds: FewShotDataset, episodes: int, args, modality: str = "image") -> dict:
    """A plain student step vs distillation steps (the default SRL with a cached teacher; distilling every 4th
    step; the SRL on the student's training view; a live teacher; no augmentation; 3 or 1 related queries per class;
    every 2nd step on clean images),
    same episodes of ``args.distill_query`` queries a class, for a student of ``modality``; steps rounded up to a
    multiple of 4 so that ``every_4`` is timed over whole cycles."""
    size = ds.image_shape[1]
    base = {"out": args.scratch, "data.image_size": size, "train.val_episodes": 2, "train.val_query": 1,
            "episode.query": args.distill_query, "train.episodes_per_step": args.episodes_per_step,
            "train.precision": args.precision}
    student = {**base, "model.modality": modality}
    teacher = Trainer(load_config(base={**base, "name": "t", "model.modality": "image+text"}), ds,
                      args.device).model.eval()
    out, sees = {}, set()
    steps = -(-max(1, episodes // args.episodes_per_step) // 4) * 4
    for name, (extra, taught) in DISTILL_VARIANTS.items():
        if not timed_variant(extra, args.distill_query, modality):
            print(f"skipped {name}: a {modality} student on episodes of {args.distill_query} queries a class")
            continue
        tr = Trainer(load_config(base={**student, **extra, "name": name}), ds, args.device,
                     teacher=teacher if taught else None)
        sees.add(tr.model.cfg.modality)  # what the timed student took in, read back from its model
        timed_steps(tr, 0, 4 * args.warmup)  # whole cycles: the timed steps start at a distillation step
        out[name] = timed_steps(tr, 4 * args.warmup, steps) / steps
    return {"student": "+".join(sorted(sees)), "query": args.distill_query, "seconds_per_step": out, "steps": steps,
            "over_plain": {name: sec / out["plain"] for name, sec in out.items() if name != "plain"}}


SETTINGS = (("conv4", 84, 1), ("conv4", 84, 5), ("resnet12", 84, 1), ("conv4", 32, 1), ("conv4", 32, 5))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", type=torch.device, default=pick_device(), help="cpu or cuda (default: cuda if any)")
    ap.add_argument("--episodes", type=int, default=20, help="timed training episodes per Conv-4 setting")
    ap.add_argument("--resnet-episodes", type=int, default=2, help="ResNet-12 at 84px is slow on a CPU; 0 skips it")
    ap.add_argument("--conventional-episodes", type=int, help="timed episodes of the conventional pipeline "
                    "(default: as many as cmkd)")
    ap.add_argument("--episodes-per-step", type=int, default=1, help="cmkd episodes batched per optimizer step")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    ap.add_argument("--compile", action="store_true", help="torch.compile the cmkd training forward")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first (the compile happens there)")
    ap.add_argument("--only", nargs="+", metavar="BACKBONE-SIZE-SHOT", help="e.g. conv4-84-1 resnet12-84-1")
    ap.add_argument("--no-distill", action="store_true", help="skip the distillation-step measurement")
    ap.add_argument("--distill-only", action="store_true", help="only the distillation-step measurement")
    ap.add_argument("--distill-modality", nargs="+", default=["image"], choices=["image", "text"],
                    help="the students whose distillation step is timed (default: image)")
    ap.add_argument("--distill-query", type=int, default=15, help="queries per class of the timed distillation "
                    "episodes (the glyph configs train with 5; the SRL's second forward scales with it)")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DataLoader workers (default: all cores)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/throughput_cpu.json"))
    args = ap.parse_args()
    scratch = tempfile.TemporaryDirectory(prefix="cmkd-throughput-")  # removed at exit
    args.scratch = scratch.name  # the benchmark's run folders (nothing is kept)
    threads = configure_cpu()
    glyphs = load_glyphs(32)
    chosen = [s for s in SETTINGS if (not args.only or f"{s[0]}-{s[1]}-{s[2]}" in args.only) and not args.distill_only]
    rows = []
    for size in sorted({s[1] for s in chosen}, reverse=True):
        ds = resized_subset(glyphs, args.classes, args.per_class, size)
        with tempfile.TemporaryDirectory() as tmp:
            files = write_jpegs(ds, Path(tmp))
            for backbone, _, shot in [s for s in chosen if s[1] == size]:
                n = args.resnet_episodes if backbone == "resnet12" else args.episodes
                if n <= 0:
                    print(f"skipped {backbone} {size}px: --resnet-episodes 0")
                    continue
                row = bench_setting(ds, files, backbone, shot, n, args)
                rows.append(row)
                print(f"{backbone} {size}px {shot}-shot: train {row['cmkd_train_eps']:.2f} vs "
                      f"{row['conventional_train_eps']:.2f} eps/s (x{row['train_ratio']:.2f}), data share "
                      f"{100 * row['data_share_of_cmkd_step']:.1f}%, eval {row['cmkd_eval_eps']:.1f} vs "
                      f"{row['conventional_eval_eps']:.1f} eps/s (x{row['eval_ratio']:.1f})", flush=True)
    distill = []
    if not args.no_distill:  # one dataset for every student timed
        small = resized_subset(glyphs, args.classes, args.per_class, 32)
        distill = [bench_distill(small, args.episodes, args, m) for m in args.distill_modality]
    gpu = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else None
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                          "torch": torch.__version__, "threads": threads, "device": str(args.device), "gpu": gpu,
                          "dataloader_workers": args.workers},
              "dataset": f"glyphs, {args.classes} base classes x {args.per_class} images, replicated to RGB, "
                         "JPEG files at 128px for the conventional pipeline",
              "settings": rows, "distillation_step": distill,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, json.dumps(result, indent=1), sync=False)  # whole or not at all, never through a link
    print("\n| backbone | size | shot | eps/step | precision | cmkd train eps/s | host placement | conventional "
          "| ratio | data share | peak device MB | cmkd eval eps/s | conventional | ratio |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mem = "-" if r["peak_device_mb"] is None else f"{r['peak_device_mb']:.0f}"
        print(f"| {r['backbone']} | {r['image_size']} | {r['shot']} | {r['episodes_per_step']} | "
              f"{r['precision']}{' compiled' if r['compile'] else ''} | {r['cmkd_train_eps']:.2f} | "
              f"{r['host_placement_train_eps']:.2f} | {r['conventional_train_eps']:.2f} | {r['train_ratio']:.2f} | "
              f"{100 * r['data_share_of_cmkd_step']:.1f}% | {mem} | {r['cmkd_eval_eps']:.1f} | "
              f"{r['conventional_eval_eps']:.1f} | {r['eval_ratio']:.1f} |")
    for d in distill:
        ratios = ", ".join(f"{name} {r:.2f}" for name, r in d["over_plain"].items())
        print(f"\n{d['student']} student's distillation step / its plain step (Conv-4 32px 5-way 1-shot "
              f"{d['query']}-query, {d['steps']} steps each): {ratios}")
    print(f"peak RSS {result['peak_rss_mb']:.0f} MB; {args.out}")


if __name__ == "__main__":
    main()
