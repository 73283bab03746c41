"""Per-input configuration policy: a small network that picks (tokens, depth, width) for each image.

The policy reads the backbone's own patch embeddings (frozen, computed once and shared with the
backbone run that follows), mixes them with two Mixer-style blocks, pools, and has one categorical
head per axis. It is trained with REINFORCE against the frozen backbone::

    reward(x, a) = scale * quality(x, a) - lam * flops(a) / flops(full)

with ``quality`` = ``-CE`` or correctness (0/1), an EMA baseline and an entropy bonus. Because the
backbone is frozen, the quality of *every* action on every training image is computed once, up
front, with one ``forward_anytime`` pass per width (:func:`collect_outcomes`); policy training then
only indexes that table. FLOPs are counted once per configuration (:func:`configuration_flops`).

At inference (:class:`PolicyClassifier`) the policy picks a configuration per image and the batch
runs in one pass per chosen token count (:func:`run_mixed`): per-image depths (images leave the
batch after their last block) and widths inside the pass, so a batch of many different choices
costs a few backbone calls, not one per configuration.

:func:`evaluate_comparators` scores, with the same code and data: the full configuration, every
fixed configuration, confidence early exit (a threshold sweep, ``forward_early_exit``), the oracle
(cheapest configuration that is still correct; an upper bound) and learned policies.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import load_strict, read_state_dict, save_state_dict, write_json
from ..errors import check_fields
from ..evaluation.cost import flop_counter, measure_flops, measure_latency, time_call
from ..evaluation.reports import new_figure, save_figure, write_csv
from ..evaluation.sweep import pareto_front
from ..models.adaperceiver import AdaPerceiver, AdaPerceiverClassifier
from ..models.util import eval_mode, module_device

REWARDS = ("ce", "correct")
BASELINES = ("ema", "loo")


# --------------------------------------------------------------------------------------------------
# action space and costs
@dataclass(frozen=True)
class ActionSpace:
    """The choices of each policy head."""

    tokens: tuple[int, ...]
    depths: tuple[int, ...]
    widths: tuple[int, ...]

    @classmethod
    def of(cls, model: AdaPerceiver) -> "ActionSpace":
        """Every trained granularity, every depth, every trained width of ``model``."""
        return cls(tuple(model.cfg.trained_grans), tuple(range(1, model.num_blocks + 1)), tuple(model.cfg.widths))

    def __post_init__(self) -> None:
        for name in ("tokens", "depths", "widths"):
            v = tuple(int(a) for a in getattr(self, name))
            if not v or list(v) != sorted(set(v)):
                raise ValueError(f"action space {name} must be non-empty increasing ints, got {list(v)}")
            object.__setattr__(self, name, v)

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.tokens), len(self.depths), len(self.widths)

    @property
    def full(self) -> tuple[int, int, int]:
        return self.tokens[-1], self.depths[-1], self.widths[-1]

    def config(self, it: int, id_: int, iw: int) -> tuple[int, int, int]:
        return self.tokens[it], self.depths[id_], self.widths[iw]

    def check(self, model: AdaPerceiver) -> None:
        """Every axis value must be a configuration the model can run (checked by the model)."""
        for t in self.tokens:
            model.resolve_configuration(t, None, None)
        for d in self.depths:
            model.resolve_configuration(None, d, None)
        for w in self.widths:
            model.resolve_configuration(None, None, w)

    def to_dict(self) -> dict[str, list[int]]:
        return {"tokens": list(self.tokens), "depths": list(self.depths), "widths": list(self.widths)}


def _example_input(model: AdaPerceiver) -> Tensor:
    p = next(model.parameters())
    c = model.cfg
    return torch.zeros(1, c.in_chans, c.img_size, c.img_size, device=p.device, dtype=p.dtype)


def _per_configuration(space: ActionSpace, value) -> Tensor:
    """``(n_tokens, n_depths, n_widths)`` table of ``value(tokens, depth, width)``."""
    table = torch.zeros(space.shape, dtype=torch.float64)
    for i, t in enumerate(space.tokens):
        for j, d in enumerate(space.depths):
            for k, w in enumerate(space.widths):
                table[i, j, k] = value(t, d, w)
    return table


def configuration_flops(model: AdaPerceiver, space: ActionSpace) -> Tensor:
    """FLOPs per image of every configuration, ``(n_tokens, n_depths, n_widths)``, counted once each."""
    return _per_configuration(space, lambda t, d, w: measure_flops(model, t, d, w))


def configuration_latency(model: AdaPerceiver, space: ActionSpace, batch_size: int = 1, repeats: int = 10) -> Tensor:
    """Median milliseconds per image of every configuration at ``batch_size``, ``(n_tokens, n_depths,
    n_widths)``: a cost for :func:`train_policy` when wall-clock, not FLOPs, is what should shrink
    (on a CPU at batch 1 the time follows the number of blocks far more than the FLOPs)."""
    return _per_configuration(
        space, lambda t, d, w: measure_latency(model, t, d, w, batch_size, repeats=repeats).median_ms / batch_size)


def writeout_flops(model: AdaPerceiver, tokens: int) -> int:
    """FLOPs of one read-out (write attention + head) from ``tokens`` latents: early exit pays it per block."""
    x = _example_input(model)
    with torch.no_grad():
        feats = model.forward_features(x, tokens=tokens, depth=1)
    with torch.enable_grad(), flop_counter() as counter:
        model.write_out(*feats)
    return int(counter.get_total_flops())


# --------------------------------------------------------------------------------------------------
# the policy network
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


@dataclass
class PolicyLogits:
    tokens: Tensor  # (B, n_tokens)
    depth: Tensor  # (B, n_depths)
    width: Tensor  # (B, n_widths)

    def heads(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.tokens, self.depth, self.width


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
        n_t, n_d, n_w = space.shape
        self.head_tokens = nn.Linear(cfg.head_hidden, n_t)
        self.head_depth = nn.Linear(cfg.head_hidden, n_d)
        self.head_width = nn.Linear(cfg.head_hidden, n_w)
        for head in (self.head_tokens, self.head_depth, self.head_width):  # start uniform
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

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
        return PolicyLogits(self.head_tokens(h), self.head_depth(h), self.head_width(h))

    @torch.no_grad()
    def choose(self, patches: Tensor) -> Tensor:
        """Most likely action per axis: ``(B, 3)`` indices into (tokens, depths, widths)."""
        return torch.stack([lg.argmax(-1) for lg in self(patches).heads()], dim=1)

    def to_dict(self) -> dict[str, Any]:
        return {"policy": asdict(self.cfg), "space": self.space.to_dict(), "num_patches": self.num_patches,
                "embed_dim": self.embed_dim}


def save_policy(policy: ConfigPolicy, directory: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
    directory = Path(directory)
    save_state_dict(directory / "policy.safetensors", policy.state_dict(), metadata={"format": "pt"})
    write_json(directory / "policy.json", {**policy.to_dict(), **dict(extra or {})})
    return directory


def load_policy(directory: str | Path) -> tuple[ConfigPolicy, dict[str, Any]]:
    """Return the policy saved by :func:`save_policy` and its JSON metadata (lam, reward, ...)."""
    directory = Path(directory)
    path = directory / "policy.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no policy.json; is it a directory written by 'adaperceiver policy train'?")
    meta = json.loads(path.read_text())
    space = ActionSpace(**meta["space"])
    policy = ConfigPolicy(meta["num_patches"], meta["embed_dim"], space, PolicyConfig(**meta["policy"]))
    load_strict(policy, read_state_dict(directory / "policy.safetensors"), source=str(directory / "policy.safetensors"))
    return policy.eval(), meta


# --------------------------------------------------------------------------------------------------
# outcomes of every action on a data set (the reward table)
@dataclass
class Outcomes:
    """Per-image quality of every configuration: tensors ``(N, n_tokens, n_depths, n_widths)``."""

    images: Tensor  # (N, C, H, W): kept so the policy can see the patch embeddings
    labels: Tensor  # (N,)
    ce: Tensor
    correct: Tensor  # bool
    space: ActionSpace

    def __len__(self) -> int:
        return self.labels.shape[0]


def _batches(data: Any, batch_size: int) -> Iterable[tuple[Tensor, Tensor]]:
    """Accept a Dataset of (image, label), a DataLoader, or an ``(images, labels)`` tensor pair."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        xs, ys = data
        for i in range(0, xs.shape[0], batch_size):
            yield xs[i:i + batch_size], ys[i:i + batch_size]
        return
    if isinstance(data, torch.utils.data.DataLoader):
        for x, y, *_ in data:
            yield x, y
        return
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    for x, y, *_ in loader:
        yield x, torch.as_tensor(y)


@torch.no_grad()
def collect_outcomes(model: AdaPerceiverClassifier, data: Any, space: ActionSpace | None = None,
                     batch_size: int = 256, limit: int | None = None) -> Outcomes:
    """Cross-entropy and correctness of every configuration on every image of ``data``.

    One ``forward_anytime`` pass per width and batch gives all token counts and depths.
    """
    if not isinstance(model, AdaPerceiverClassifier):
        raise ValueError("policies are defined for classification models (AdaPerceiverClassifier)")
    space = space or ActionSpace.of(model)
    space.check(model)
    with eval_mode(model):
        dev = next(model.parameters()).device
        imgs, labels, ces, cors = [], [], [], []
        seen = 0
        for x, y in _batches(data, batch_size):
            if limit is not None:
                if seen >= limit:
                    break
                x, y = x[:limit - seen], y[:limit - seen]
            x, y = x.to(dev), y.to(dev).long()
            ce = x.new_empty(x.shape[0], *space.shape)
            correct = torch.zeros(x.shape[0], *space.shape, dtype=torch.bool, device=dev)
            for k, w in enumerate(space.widths):
                out = model.forward_anytime(x, tokens=space.tokens[-1], width=w, depths=space.depths,
                                            token_counts=space.tokens).outputs  # (n_d, n_t, B, C)
                logits = out.permute(2, 1, 0, 3)  # (B, n_t, n_d, C)
                target = y.view(-1, 1, 1).expand(logits.shape[:3])
                ce[..., k] = F.cross_entropy(logits.flatten(0, 2), target.flatten(), reduction="none").view(logits.shape[:3])
                correct[..., k] = logits.argmax(-1) == target
            imgs.append(x.cpu())
            labels.append(y.cpu())
            ces.append(ce.cpu())
            cors.append(correct.cpu())
            seen += x.shape[0]
        if not labels:
            raise ValueError("no data: the data set yielded no batches")
        return Outcomes(torch.cat(imgs), torch.cat(labels), torch.cat(ces), torch.cat(cors), space)


# --------------------------------------------------------------------------------------------------
# REINFORCE
@dataclass
class PolicyTrainConfig:
    lam: float = 0.1  # weight of the normalised FLOPs cost
    reward: str = "ce"  # "ce" (quality = -cross-entropy) or "correct" (quality = 1 if correct)
    scale: float = 1.0  # weight of the quality term
    entropy: float = 0.01  # entropy bonus
    baseline: str = "ema"  # "ema": EMA of the mean reward; "loo": per image, mean reward of its other samples
    baseline_momentum: float = 0.9  # of the EMA baseline
    lr: float = 2e-3
    weight_decay: float = 0.0
    epochs: int = 10
    batch_size: int = 128
    samples_per_input: int = 4  # actions sampled per image each step (rewards are table look-ups)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {list(BASELINES)}, got {self.baseline!r}")
        if self.baseline == "loo" and self.samples_per_input < 2:
            raise ValueError("baseline='loo' needs samples_per_input >= 2")
        if self.reward not in REWARDS:
            raise ValueError(f"reward must be one of {list(REWARDS)}, got {self.reward!r}")
        if self.lam < 0 or self.scale <= 0 or self.entropy < 0 or not 0 <= self.baseline_momentum < 1:
            raise ValueError("need lam >= 0, scale > 0, entropy >= 0 and baseline_momentum in [0, 1)")
        if self.epochs < 1 or self.batch_size < 1 or self.samples_per_input < 1:
            raise ValueError("epochs, batch_size and samples_per_input must be >= 1")


def reward_table(outcomes: Outcomes, cost: Tensor, cfg: PolicyTrainConfig) -> Tensor:
    """``(N, n_t, n_d, n_w)`` reward of every action on every image."""
    quality = -outcomes.ce if cfg.reward == "ce" else outcomes.correct.float()
    norm_cost = (cost / cost.max()).to(quality.dtype)
    return cfg.scale * quality - cfg.lam * norm_cost


@torch.no_grad()
def patch_embeddings(model: AdaPerceiver, images: Tensor) -> Tensor:
    """The backbone's patch embeddings (frozen): what the policy looks at."""
    dev = next(model.parameters()).device
    return model.patch_embed(images.to(dev))[0]


@dataclass
class TrainLog:
    mean_reward: list[float] = field(default_factory=list)
    mean_cost: list[float] = field(default_factory=list)  # normalised cost of the greedy choice
    accuracy: list[float] = field(default_factory=list)  # of the greedy choice, on the training table


def train_policy(model: AdaPerceiver, outcomes: Outcomes, cost: Tensor, cfg: PolicyTrainConfig | None = None,
                 policy_cfg: PolicyConfig | None = None, log: TrainLog | None = None) -> ConfigPolicy:
    """REINFORCE a new policy against the frozen ``model`` on precomputed ``outcomes``."""
    cfg = cfg or PolicyTrainConfig()
    if tuple(cost.shape) != outcomes.space.shape:
        raise ValueError(f"cost table has shape {tuple(cost.shape)}, the action space {outcomes.space.shape}")
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    policy = ConfigPolicy.for_model(model, outcomes.space, policy_cfg)
    dev = next(model.parameters()).device
    policy.to(dev).train()
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rewards = reward_table(outcomes, cost, cfg).to(dev)
    n = len(outcomes)
    n_t, n_d, n_w = outcomes.space.shape
    steps = cfg.epochs * math.ceil(n / cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    baseline: float | None = None
    k = cfg.samples_per_input
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for s in range(0, n, cfg.batch_size):
            idx = order[s:s + cfg.batch_size]
            patches = patch_embeddings(model, outcomes.images[idx])
            heads = policy(patches).heads()
            dists = [torch.distributions.Categorical(logits=h) for h in heads]
            acts = [d.sample((k,)) for d in dists]  # each (k, B)
            logp = sum(d.log_prob(a) for d, a in zip(dists, acts))  # (k, B)
            entropy = sum(d.entropy() for d in dists).mean()
            r = rewards[idx.to(dev)]  # (B, n_t, n_d, n_w)
            rows = torch.arange(len(idx), device=dev).expand(k, -1)
            got = r[rows, acts[0], acts[1], acts[2]]  # (k, B)
            mean_r = float(got.mean())
            baseline = mean_r if baseline is None else cfg.baseline_momentum * baseline + (1 - cfg.baseline_momentum) * mean_r
            if cfg.baseline == "loo":
                advantage = got - (got.sum(0, keepdim=True) - got) / (k - 1)
            else:
                advantage = got - baseline
            loss = -(advantage * logp).mean() - cfg.entropy * entropy
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if log is not None:
                with torch.no_grad():
                    a = [h.argmax(-1) for h in heads]
                    sel = torch.arange(len(idx), device=dev)
                    log.mean_reward.append(mean_r)
                    log.mean_cost.append(float((cost.to(dev)[a[0], a[1], a[2]] / cost.max()).mean()))
                    log.accuracy.append(float(outcomes.correct.to(dev)[idx.to(dev)][sel, a[0], a[1], a[2]].float().mean()))
    return policy.eval()


# --------------------------------------------------------------------------------------------------
# inference with a policy
def run_from_patches(model: AdaPerceiver, patches: Tensor, grid: tuple[int, int], tokens: int, depth: int,
                     width: int) -> Tensor:
    """The rest of ``model(x, tokens, depth, width)`` once the patch embeddings are known."""
    hidden, _ = model.resolve_width(width, patches.shape[0])
    z = model.read_latents(patches, model.resolve_tokens(tokens))
    z, _ = model.run_blocks(z, model.resolve_depth(depth), hidden)
    return model.write_out(z, patches, grid)


@torch.no_grad()
def run_mixed(model: AdaPerceiver, patches: Tensor, grid: tuple[int, int], tokens: Sequence[int],
              depths: Sequence[int], widths: Sequence[int]) -> Tensor:
    """Outputs of a batch whose images each have their own ``(tokens, depth, width)``, in one pass.

    Equals ``run_from_patches`` per image: the batch runs at its largest token count (by the block
    mask, the first ``t`` latents evolve as in a run at ``t``) and each image's read-out sees only
    its first ``tokens[i]`` latents; widths differ per image through ``sample_hidden`` (units past
    an image's width are zeroed, which equals slicing); images are sorted by depth, deepest first,
    so after block ``j`` the images still running are a prefix of the batch and those whose depth
    is ``j`` are written out and leave it.
    """
    b = patches.shape[0]
    dev = patches.device
    order = sorted(range(b), key=lambda i: -depths[i])
    d_sorted = [depths[i] for i in order]
    t_sorted = [tokens[i] for i in order]
    w_sorted = [widths[i] for i in order]
    same_order = order == list(range(b))
    perm = None if same_order else torch.tensor(order, device=dev)
    p = patches if same_order else patches[perm]
    n = max(t_sorted)
    z = model.read_latents(p, n)
    hid = [min(model.resolve_width(w, 1)[0], model.cfg.mlp_hidden) for w in w_sorted]
    hid_t = torch.tensor(hid, device=dev) if min(hid) != max(hid) else None
    outs = []
    active = b
    mask = model.latent_mask(n, dev)
    for i in range(d_sorted[0]):
        h = hid[:active]
        if min(h) == max(h):
            z = model.blocks[i](z, model.rope, mask, h[0])
        else:
            z = model.blocks[i](z, model.rope, mask, sample_hidden=hid_t[:active])
        k = active
        while k > 0 and d_sorted[k - 1] == i + 1:
            k -= 1
        if k < active:  # images [k, active) stop after this block
            ts = t_sorted[k:active]
            zo = z[k:active]
            if min(ts) == max(ts):
                outs.append(model.write_out(zo[:, :ts[0]], p[k:active], grid))
            else:  # each image reads out its own latent prefix
                outs.append(model.write_out_lengths(zo, p[k:active], grid, torch.tensor(ts, device=dev)))
            z = z[:k]
            active = k
    out = torch.cat(outs[::-1]) if len(outs) > 1 else outs[0]  # shallowest were written first
    if same_order:
        return out
    res = torch.empty_like(out)
    res[perm] = out
    return res


@dataclass
class PolicyOutput:
    logits: Tensor  # (B, classes)
    actions: Tensor  # (B, 3) indices into the action space


class PolicyClassifier(nn.Module):
    """Backbone + policy: embed patches once, choose a configuration per image, run the batch.

    ``group`` says how a batch whose images chose different configurations runs:

    * ``"tokens"`` (default): one :func:`run_mixed` pass per chosen token count: per-image depths
      and widths inside the pass, no latent wasted (measured fastest at batch 64 on CPU);
    * ``"mixed"``: one :func:`run_mixed` pass for the whole batch at its largest token count, each
      image written out from its own token prefix;
    * ``"config"``: one :func:`run_from_patches` call per distinct configuration.

    All three give each image the output of its own configuration. ``compile_policy`` compiles the
    policy network (``torch.compile``, once per batch size): its ~36 small operations cost about a
    quarter of the full configuration's time on a tiny CPU model when run eagerly.
    """

    GROUPS = ("tokens", "mixed", "config")

    def __init__(self, model: AdaPerceiverClassifier, policy: ConfigPolicy, group: str = "tokens",
                 compile_policy: bool = False):
        super().__init__()
        if not isinstance(model, AdaPerceiverClassifier):
            raise ValueError("PolicyClassifier needs an AdaPerceiverClassifier")
        if group not in self.GROUPS:
            raise ValueError(f"group must be one of {list(self.GROUPS)}, got {group!r}")
        policy.space.check(model)
        self.model = model
        self.policy = policy
        self.group = group
        self._choose = torch.compile(policy.choose, dynamic=False) if compile_policy else policy.choose

    @torch.no_grad()
    def forward(self, x: Tensor) -> PolicyOutput:
        patches, grid = self.model.patch_embed(x)
        actions = self._choose(patches)
        space = self.policy.space
        chosen = [space.config(*a) for a in actions.tolist()]  # one host sync for the whole batch
        if len(set(chosen)) == 1:  # one configuration for the whole batch (always so at batch 1)
            return PolicyOutput(run_from_patches(self.model, patches, grid, *chosen[0]), actions)
        tokens, depths, widths = (list(v) for v in zip(*chosen))
        if self.group == "mixed" or (self.group == "tokens" and min(tokens) == max(tokens)):
            return PolicyOutput(run_mixed(self.model, patches, grid, tokens, depths, widths), actions)
        logits = patches.new_empty(x.shape[0], self.model.cfg.num_classes)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, c in enumerate(chosen):
            groups.setdefault(c if self.group == "config" else c[:1], []).append(i)
        for key, idx in groups.items():
            sel = torch.tensor(idx, device=x.device)
            if self.group == "config":
                logits[sel] = run_from_patches(self.model, patches[sel], grid, *key)
            else:
                logits[sel] = run_mixed(self.model, patches[sel], grid, [tokens[i] for i in idx],
                                        [depths[i] for i in idx], [widths[i] for i in idx])
        return PolicyOutput(logits, actions)


# --------------------------------------------------------------------------------------------------
# comparators
def _stream_ms(fn, xs: Tensor, batch_size: int, repeats: int = 3) -> float:
    """Median over ``repeats`` of the wall time to process ``xs`` in batches of ``batch_size``, in ms per image.

    ``fn`` gets ready input tensors (no data loading inside the timing); one untimed warm-up pass.
    Timed with the one timer (:func:`~adaperceiver.evaluation.cost.time_call`, which synchronises
    CUDA), so every method of the comparison is measured the same way.
    """
    chunks = list(xs.split(batch_size))

    def stream() -> None:
        for c in chunks:
            fn(c)

    return time_call(stream, xs.shape[0], warmup=1, repeats=repeats, device=xs.device).median_ms / xs.shape[0]


def flops_saved_at_parity(rows: Sequence[Mapping[str, Any]], full_acc: float, full_gflops: float,
                          tolerance_pp: float = 0.1) -> dict[str, Any] | None:
    """Cheapest row with ``acc1 >= full_acc - tolerance_pp`` and the FLOPs it saves (in %)."""
    ok = [r for r in rows if r["acc1"] >= full_acc - tolerance_pp - 1e-9]
    if not ok:
        return None
    best = min(ok, key=lambda r: r["gflops"])
    return {"method": best["method"], "setting": best["setting"], "acc1": best["acc1"], "gflops": best["gflops"],
            "flops_saved_pct": 100.0 * (1.0 - best["gflops"] / full_gflops)}


@torch.no_grad()
def evaluate_comparators(model: AdaPerceiverClassifier, outcomes: Outcomes, cost: Tensor,
                         policies: Mapping[str, ConfigPolicy] | None = None, taus: Sequence[float] = (),
                         latency_batch_sizes: Sequence[int] = (1,), latency_images: int = 64,
                         latency_repeats: int = 3, eval_batch_size: int = 256,
                         dtype: torch.dtype | str | None = None, compile: bool = False) -> dict[str, Any]:
    """Score every method on the held-out ``outcomes``; see the module docstring.

    Each row: ``method, setting, acc1 (%), gflops (mean per image, including the policy network),
    latency_ms_b{b}`` (ms per image over the first ``latency_images`` held-out images in batches of
    ``b``, the whole method timed: patch embedding, policy, grouped backbone runs) and ``deployable``.
    The oracle is not deployable (it needs the label); its latency is the mean latency of the fixed
    configurations it picks, weighted by how often it picks them.

    With ``dtype`` and/or ``compile`` every method is timed on ``model.for_inference(dtype,
    compile)``: fixed configurations as their slim (compiled) modules, early exit and the policies'
    backbone passes on its eager copy in ``dtype`` (their shapes depend on the data, so they are not
    compiled; with ``compile`` the policy network is).
    Accuracies stay those of ``model`` as given.
    """
    with eval_mode(model):
        space = outcomes.space
        dev = next(model.parameters()).device
        xs = outcomes.images[:latency_images].to(dev)
        bss = tuple(int(b) for b in latency_batch_sizes)
        n = len(outcomes)
        gcost = cost / 1e9
        rows: list[dict[str, Any]] = []

        fast = model.for_inference(dtype, compile) if dtype is not None or compile else None
        timed = fast.model if fast is not None else model  # what early exit and the policies run on
        cast = fast.dtype if fast is not None else xs.dtype

        def lat(fn) -> dict[str, float]:
            return {f"latency_ms_b{b}": _stream_ms(fn, xs.to(cast), b, latency_repeats) for b in bss}

        # every fixed configuration (the full one included)
        fixed_lat: dict[tuple[int, int, int], dict[str, float]] = {}
        for i, t in enumerate(space.tokens):
            for j, d in enumerate(space.depths):
                for k, w in enumerate(space.widths):
                    fixed_lat[(i, j, k)] = lat(lambda c, t=t, d=d, w=w: (fast or model)(c, tokens=t, depth=d, width=w))
                    rows.append({"method": "fixed", "setting": f"{t}/{d}/{w}", "tokens": t, "depth": d, "width": w,
                                 "acc1": 100.0 * int(outcomes.correct[:, i, j, k].sum()) / n,
                                 "gflops": float(gcost[i, j, k]), **fixed_lat[(i, j, k)], "deployable": True})
        full = next(r for r in rows if (r["tokens"], r["depth"], r["width"]) == space.full)
        full = {**full, "method": "full"}
        rows.insert(0, full)

        # oracle: per image, the cheapest configuration that is correct (the cheapest overall if none is)
        flat_cost = cost.flatten()
        correct = outcomes.correct.flatten(1)
        masked = torch.where(correct, flat_cost.expand(n, -1), torch.full_like(flat_cost, float("inf")).expand(n, -1))
        choice = torch.where(correct.any(1), masked.argmin(1), flat_cost.argmin().expand(n))
        counts = torch.bincount(choice, minlength=flat_cost.numel()).double()
        oracle_lat = {key: sum(counts[c].item() * fixed_lat[tuple(int(v) for v in torch.unravel_index(torch.tensor(c), space.shape))][key]
                               for c in counts.nonzero().flatten().tolist()) / n for key in (f"latency_ms_b{b}" for b in bss)}
        rows.append({"method": "oracle", "setting": "cheapest correct", "acc1": 100.0 * int(correct.any(1).sum()) / n,
                     "gflops": float(flat_cost[choice].mean() / 1e9), **oracle_lat, "deployable": False})

        # confidence early exit at full tokens and width
        t_full, _, w_full = space.full
        write = writeout_flops(model, t_full)
        depth_cost = {d: float(cost[-1, j, -1]) for j, d in enumerate(space.depths)}
        for tau in taus:
            exit_depths, hits = [], 0
            for s in range(0, n, eval_batch_size):
                x = outcomes.images[s:s + eval_batch_size].to(dev)
                out = model.forward_early_exit(x, tau, tokens=t_full, width=w_full)
                hits += int((out.logits.argmax(-1).cpu() == outcomes.labels[s:s + eval_batch_size]).sum())
                exit_depths.append(out.exit_depth.cpu())
            ed = torch.cat(exit_depths)
            flops = torch.tensor([depth_cost[int(d)] + (int(d) - 1) * write for d in ed.tolist()], dtype=torch.float64)
            rows.append({"method": "early_exit", "setting": f"tau={tau:g}", "tau": tau, "acc1": 100.0 * hits / n,
                         "gflops": float(flops.mean() / 1e9), "mean_exit_depth": float(ed.float().mean()),
                         **lat(lambda c, tau=tau: timed.forward_early_exit(c, tau, tokens=t_full, width=w_full)),
                         "deployable": True})

        # learned policies
        for name, policy in (policies or {}).items():
            if module_device(policy) != dev:  # the caller's policy is not moved
                raise ValueError(f"policy {name!r} is on {module_device(policy)}, the model on {dev}: move it first")
            with eval_mode(policy):
                runner = PolicyClassifier(model, policy)
                x_pol = _example_input(model)
                with torch.no_grad():
                    p1 = model.patch_embed(x_pol)[0]
                with torch.enable_grad(), flop_counter() as counter:
                    policy(p1)
                pol_flops = int(counter.get_total_flops())
                acts, hits = [], 0
                for s in range(0, n, eval_batch_size):
                    out = runner(outcomes.images[s:s + eval_batch_size].to(dev))
                    hits += int((out.logits.argmax(-1).cpu() == outcomes.labels[s:s + eval_batch_size]).sum())
                    acts.append(out.actions.cpu())
                a = torch.cat(acts)
                if fast is not None:  # the same policy on the timed copy of the backbone
                    runner = PolicyClassifier(timed, copy.deepcopy(policy).to(fast.dtype), compile_policy=compile)
                # the table says what the backbone gets for these actions; the run above must agree
                table_hits = int(outcomes.correct[torch.arange(n), a[:, 0], a[:, 1], a[:, 2]].sum())
                chosen = cost[a[:, 0], a[:, 1], a[:, 2]]
                rows.append({"method": "policy", "setting": name, "acc1": 100.0 * hits / n,
                             "gflops": float((chosen.mean() + pol_flops) / 1e9), "policy_gflops": pol_flops / 1e9,
                             "table_acc1": 100.0 * table_hits / n, "mean_tokens": float(torch.tensor(space.tokens)[a[:, 0]].float().mean()),
                             "mean_depth": float(torch.tensor(space.depths)[a[:, 1]].float().mean()),
                             "mean_width": float(torch.tensor(space.widths)[a[:, 2]].float().mean()),
                             "distinct_configs": int(len({tuple(r) for r in a.tolist()})),
                             **lat(runner), "deployable": True})

        summary: dict[str, Any] = {"num_images": n, "full": {"acc1": full["acc1"], "gflops": full["gflops"]},
                                   "latency_images": int(xs.shape[0]), "latency_batch_sizes": list(bss)}
        for method in ("fixed", "early_exit", "policy", "oracle"):
            summary[f"parity_{method}"] = flops_saved_at_parity([r for r in rows if r["method"] == method],
                                                                full["acc1"], full["gflops"])
        return {"rows": rows, "summary": summary}


def write_results(result: Mapping[str, Any], out_dir: str | Path, meta: Mapping[str, Any] | None = None) -> None:
    """``comparators.csv``, ``comparators.json`` and ``accuracy_vs_gflops.png`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = result["rows"]
    write_csv(rows, out / "comparators.csv")
    (out / "comparators.json").write_text(json.dumps({**dict(meta or {}), **result}, indent=1) + "\n")
    plot_comparators(rows, out / "accuracy_vs_gflops.png")


def plot_comparators(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    fig = new_figure(figsize=(7, 5))
    ax = fig.subplots()
    fixed = [r for r in rows if r["method"] == "fixed"]
    ax.scatter([r["gflops"] for r in fixed], [r["acc1"] for r in fixed], s=10, color="0.7", label="fixed configurations")
    flags = pareto_front([(r["gflops"], r["acc1"]) for r in fixed])
    front = sorted((r for r, f in zip(fixed, flags) if f), key=lambda r: r["gflops"])
    ax.plot([r["gflops"] for r in front], [r["acc1"] for r in front], "-", color="black", lw=1.2, label="fixed-configuration front")
    style = {"early_exit": ("C0", "s", "confidence early exit"), "policy": ("C3", "*", "learned policy"),
             "oracle": ("C2", "D", "oracle (not deployable)"), "full": ("black", "o", "full")}
    series = []
    for method, (col, mk, label) in style.items():
        pts = [r for r in rows if r["method"] == method]
        if method != "policy":
            series.append((pts, col, mk, label, method == "early_exit"))
            continue
        # policies named "<family> lam=<x>" (e.g. one family per baseline) get one line each
        families = sorted({r["setting"].rsplit("lam=", 1)[0].strip() for r in pts})
        for i, fam in enumerate(families):
            fpts = [r for r in pts if r["setting"].rsplit("lam=", 1)[0].strip() == fam]
            series.append((fpts, f"C{3 + i}", "*" if i == 0 else "P", f"{label} {fam}".strip(), True))
    for pts, col, mk, label, line in series:
        pts = sorted(pts, key=lambda r: r["gflops"])
        if not pts:
            continue
        ax.plot([r["gflops"] for r in pts], [r["acc1"] for r in pts], marker=mk, color=col, ms=9 if mk == "*" else 6,
                lw=0.8 if line else 0, label=label)
    for r in rows:
        if r["method"] == "policy":
            ax.annotate(r["setting"].rsplit(" ", 1)[-1], (r["gflops"], r["acc1"]), fontsize=6, xytext=(4, -9),
                        textcoords="offset points")
    full = next((r for r in rows if r["method"] == "full"), None)
    if full:
        ax.axhspan(full["acc1"] - 0.1, full["acc1"] + 0.1, color="C1", alpha=0.15, label="full ± 0.1 pp")
        deployable = [r["acc1"] for r in rows if r["method"] != "oracle"]
        lo, hi = max(min(deployable), full["acc1"] - 15) - 0.3, max(deployable) + 0.6
        ax.set_ylim(lo, hi)
        for r in rows:  # an oracle far above the rest would squash the plot: pin it to the top edge
            if r["method"] == "oracle" and r["acc1"] > hi:
                ax.annotate(f"oracle {r['acc1']:.2f}% (above)", (r["gflops"], hi), xytext=(0, -14), fontsize=7,
                            textcoords="offset points", ha="left", arrowprops=dict(arrowstyle="->", color="C2"))
    ax.set_xlabel("GFLOPs per image (policy network included)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def format_summary(result: Mapping[str, Any]) -> str:
    s = result["summary"]
    lines = [f"full: {s['full']['acc1']:.2f}% at {s['full']['gflops']:.4f} GFLOPs ({s['num_images']} images)"]
    for method in ("fixed", "early_exit", "policy", "oracle"):
        p = s.get(f"parity_{method}")
        if p is None:
            lines.append(f"{method:>10}: no point within 0.1 pp of full")
        else:
            lines.append(f"{method:>10}: {p['setting']}: {p['acc1']:.2f}% at {p['gflops']:.4f} GFLOPs "
                         f"({-p['flops_saved_pct']:+.1f}% FLOPs vs full)")
    return "\n".join(lines)


__all__ = [
    "ActionSpace", "ConfigPolicy", "MixerBlock", "Outcomes", "PolicyClassifier", "PolicyConfig", "PolicyOutput",
    "PolicyTrainConfig", "TrainLog", "collect_outcomes", "configuration_flops", "configuration_latency",
    "evaluate_comparators",
    "flops_saved_at_parity", "format_summary", "load_policy", "reward_table", "run_from_patches", "run_mixed",
    "save_policy", "train_policy", "write_results",
]
