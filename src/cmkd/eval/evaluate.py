"""Scoring models on fixed evaluation episodes.

Evaluation embeds every sample of the split once (eval mode, no augmentation) and then
scores each episode from those embeddings, so hundreds of episodes cost one pass over
the split. Every method is scored on the same episode list (paired comparison).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cmkd.config import EpisodeConfig
from cmkd.data.device import DeviceData
from cmkd.data.episodes import EpisodeSampler, episode_labels


def episode_list(data: DeviceData, split: str, setting: EpisodeConfig, count: int, seed: int) -> np.ndarray:
    """The fixed ``[count, way*(shot+query)]`` episodes of a split and setting."""
    ds = data.dataset
    sampler = EpisodeSampler(ds.labels, ds.split_classes(split), setting.way, setting.shot, setting.query,
                             ds.groups, setting.fine_grained, ds.class_names, split)
    return sampler.fixed(count, seed)


@torch.no_grad()
def embed_indices(model: torch.nn.Module, data: DeviceData, indices: np.ndarray, all_captions: bool = True,
                  batch: int = 1024) -> torch.Tensor:
    """Eval-mode embeddings ``[len(indices), D]`` of the given samples."""
    was_training = model.training
    model.eval()
    idx = torch.as_tensor(indices, device=data.device)
    out = torch.cat([data.embed(model, idx[i:i + batch], all_captions=all_captions)
                     for i in range(0, len(idx), batch)])
    model.train(was_training)
    return out


@dataclass
class Embedded:
    """Embeddings of a sorted set of samples, looked up by global sample index."""

    indices: np.ndarray
    emb: torch.Tensor

    def rows(self, episodes: np.ndarray) -> torch.Tensor:
        pos = np.searchsorted(self.indices, episodes)
        if not np.array_equal(self.indices[np.minimum(pos, len(self.indices) - 1)], episodes):
            raise KeyError("an episode uses samples that were not embedded")
        return self.emb[torch.as_tensor(pos, device=self.emb.device)]


def embed_samples(model: torch.nn.Module, data: DeviceData, indices: np.ndarray,
                  all_captions: bool = True) -> Embedded:
    uniq = np.unique(indices)
    return Embedded(uniq, embed_indices(model, data, uniq, all_captions))


@torch.no_grad()
def accuracy_per_episode(model: torch.nn.Module, embedded: Embedded, episodes: np.ndarray, way: int, shot: int,
                         chunk: int = 200) -> np.ndarray:
    """Accuracy on each episode (rows of global sample indices) from precomputed embeddings."""
    query = (episodes.shape[1] - way * shot) // way
    truth = episode_labels(way, query, embedded.emb.device)
    accs = []
    for i in range(0, len(episodes), chunk):
        scores = model.scores(embedded.rows(episodes[i:i + chunk]), way, shot)
        accs.append((scores.argmax(-1) == truth).float().mean(-1))
    return torch.cat(accs).cpu().numpy()


def evaluate_episodes(model: torch.nn.Module, data: DeviceData, episodes: np.ndarray, way: int, shot: int,
                      all_captions: bool = True) -> np.ndarray:
    """Accuracy of ``model`` on each episode, embedding each needed sample once."""
    return accuracy_per_episode(model, embed_samples(model, data, episodes, all_captions), episodes, way, shot)
