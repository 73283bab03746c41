"""The policy network: a small net over the backbone's patch embeddings with one categorical head per
axis; saved and loaded as a directory of its own."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...checkpoint import load_strict, read_state_dict, save_state_dict, write_json
from ...errors import check_fields
from ...models.adaperceiver import AdaPerceiver
from ...models.setting import Setting
from .space import ActionSpace


@dataclass
class PolicyConfig:
    """Size of the policy network (the action space comes from the backbone)."""

    dim: int = 32  # channels after projecting the backbone's patch embeddings
    num_blocks: int = 2  # Mixer blocks; 0: project each patch, pool, then an MLP (the cheapest policy)
    token_mlp_ratio: float = 0.5
    channel_mlp_ratio: float = 2.0
    head_hidden: int = 64

    def __post_init__(self) -> None:
        check_fields(self, {"dim": ">= 1", "num_blocks": ">= 0", "token_mlp_ratio": "> 0", "channel_mlp_ratio": "> 0",
                            "head_hidden": ">= 1"}, "policy config")


class MixerBlock(nn.Module):
    """MLP-Mixer block: an MLP across patches, then an MLP across channels, both pre-norm residual."""

    def __init__(self, num_patches: int, dim: int, token_hidden: int, channel_hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(nn.Linear(num_patches, token_hidden), nn.GELU(), nn.Linear(token_hidden, num_patches))
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mlp = nn.Sequential(nn.Linear(dim, channel_hidden), nn.GELU(), nn.Linear(channel_hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class PolicyLogits(tuple):
    """One ``(B, n_values)`` logit tensor per setting axis, in :class:`Setting` order; ``.tokens``,
    ``.depth``, ... name them."""

    def heads(self) -> tuple[Tensor, ...]:
        return tuple(self)

    def __getattr__(self, name: str) -> Tensor:
        if name in Setting._fields:
            return self[Setting._fields.index(name)]
        raise AttributeError(name)


class ConfigPolicy(nn.Module):
    """Patch embeddings ``(B, P, D)`` -> one categorical distribution per axis."""

    def __init__(self, num_patches: int, embed_dim: int, space: ActionSpace, cfg: PolicyConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or PolicyConfig()
        self.space = space
        self.num_patches = num_patches
        self.embed_dim = embed_dim
        self.proj = nn.Linear(embed_dim, cfg.dim)
        self.blocks = nn.ModuleList(
            MixerBlock(num_patches, cfg.dim, max(1, int(num_patches * cfg.token_mlp_ratio)),
                       max(1, int(cfg.dim * cfg.channel_mlp_ratio)))
            for _ in range(cfg.num_blocks)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.trunk = nn.Sequential(nn.Linear(cfg.dim, cfg.head_hidden), nn.GELU())
        self.heads = nn.ModuleList(nn.Linear(cfg.head_hidden, n) for n in space.shape)  # one per axis
        for head in self.heads:  # start uniform
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def head(self, axis: str) -> nn.Linear:
        """The output head of one setting axis (``"tokens"``, ``"depth"``, ...)."""
        return self.heads[Setting._fields.index(axis)]

    @classmethod
    def for_model(cls, model: AdaPerceiver, space: ActionSpace | None = None, cfg: PolicyConfig | None = None) -> "ConfigPolicy":
        space = space or ActionSpace.of(model)
        space.check(model)
        gh, gw = model.patch_embed.grid
        return cls(gh * gw, model.cfg.embed_dim, space, cfg)

    def forward(self, patches: Tensor) -> PolicyLogits:
        if patches.dim() != 3 or patches.shape[1:] != (self.num_patches, self.embed_dim):
            raise ValueError(f"policy expects patch embeddings (B, {self.num_patches}, {self.embed_dim}), "
                             f"got {tuple(patches.shape)} (it works at the backbone's trained image size only)")
        if len(self.blocks):
            h = self.proj(patches)
            for blk in self.blocks:
                h = blk(h)
            h = self.norm(h).mean(1)
        else:  # per-patch features pooled at once (a DeepSets-style sum): a handful of small operations
            h = self.norm(F.gelu(self.proj(patches)).mean(1))
        h = self.trunk(h)
        return PolicyLogits(head(h) for head in self.heads)

    @torch.no_grad()
    def choose(self, patches: Tensor) -> Tensor:
        """Most likely action per axis: ``(B, n_axes)`` indices into each axis's values."""
        return torch.stack([lg.argmax(-1) for lg in self(patches).heads()], dim=1)

    def to_dict(self) -> dict[str, Any]:
        return {"policy": asdict(self.cfg), "space": self.space.to_dict(), "num_patches": self.num_patches,
                "embed_dim": self.embed_dim}


def save_policy(policy: ConfigPolicy, directory: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
    directory = Path(directory)
    save_state_dict(directory / "policy.safetensors", policy.state_dict(), metadata={"format": "pt"})
    write_json(directory / "policy.json", {**policy.to_dict(), **dict(extra or {})})
    return directory


# 0.2.0 saved one named head per axis
_LEGACY_HEADS = {f"head_{axis}": f"heads.{i}" for i, axis in enumerate(Setting._fields)}


def load_policy(directory: str | Path) -> tuple[ConfigPolicy, dict[str, Any]]:
    """Return the policy saved by :func:`save_policy` and its JSON metadata (lam, reward, ...)."""
    directory = Path(directory)
    path = directory / "policy.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no policy.json; is it a directory written by 'adaperceiver policy train'?")
    meta = json.loads(path.read_text())
    space = ActionSpace(**meta["space"])
    policy = ConfigPolicy(meta["num_patches"], meta["embed_dim"], space, PolicyConfig(**meta["policy"]))
    state = {_LEGACY_HEADS.get(k.rsplit(".", 1)[0], k.rsplit(".", 1)[0]) + "." + k.rsplit(".", 1)[1]: v
             for k, v in read_state_dict(directory / "policy.safetensors").items()}
    load_strict(policy, state, source=str(directory / "policy.safetensors"))
    return policy.eval(), meta


__all__ = ["ConfigPolicy", "MixerBlock", "PolicyConfig", "PolicyLogits", "load_policy", "save_policy"]
