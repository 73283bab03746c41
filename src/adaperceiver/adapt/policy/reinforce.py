"""Training a policy: the outcome of every action on every image, computed once against the frozen backbone
(:func:`collect_outcomes`), then REINFORCE on that table (:func:`train_policy`)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import check_fields
from ...models.adaperceiver import AdaPerceiver, AdaPerceiverClassifier
from ...models.setting import Setting
from ...models.util import eval_mode
from .network import ConfigPolicy, PolicyConfig
from .space import ActionSpace

REWARDS = ("ce", "correct")
BASELINES = ("ema", "loo")

@dataclass
class Outcomes:
    """Per-image quality of every configuration: tensors ``(N, *space.shape)``."""

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

    One ``forward_anytime`` pass per batch and value of the axes after tokens and depth (the widths)
    gives all token counts and depths.
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
            for rest in itertools.product(*(range(n) for n in space.shape[2:])):
                kw = {name: values[i] for name, values, i in zip(Setting._fields[2:], space.axes[2:], rest)}
                out = model.forward_anytime(x, tokens=space.tokens[-1], depths=space.depths,
                                            token_counts=space.tokens, **kw).outputs  # (n_d, n_t, B, C)
                logits = out.permute(2, 1, 0, 3)  # (B, n_t, n_d, C)
                target = y.view(-1, 1, 1).expand(logits.shape[:3])
                at = (slice(None), slice(None), slice(None), *rest)
                ce[at] = F.cross_entropy(logits.flatten(0, 2), target.flatten(), reduction="none").view(logits.shape[:3])
                correct[at] = logits.argmax(-1) == target
            imgs.append(x.cpu())
            labels.append(y.cpu())
            ces.append(ce.cpu())
            cors.append(correct.cpu())
            seen += x.shape[0]
        if not labels:
            raise ValueError("no data: the data set yielded no batches")
        return Outcomes(torch.cat(imgs), torch.cat(labels), torch.cat(ces), torch.cat(cors), space)


# the cost and quality terms are normalised to about [0, 1]: weights beyond 100 only rescale the step, and an
# AdamW lr above 1 diverges
POLICY_TRAIN_RANGES = {"lam": "[0, 100]", "scale": "(0, 100]", "entropy": "[0, 10]", "baseline_momentum": "[0, 1)",
                       "lr": "(0, 1]", "weight_decay": "[0, 1]", "epochs": ">= 1", "batch_size": ">= 1",
                       "samples_per_input": ">= 1", "seed": ">= 0"}


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
        check_fields(self, POLICY_TRAIN_RANGES, "policy train config")  # every field's type and range (no NaN/inf)
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {list(BASELINES)}, got {self.baseline!r}")
        if self.baseline == "loo" and self.samples_per_input < 2:
            raise ValueError("baseline='loo' needs samples_per_input >= 2")
        if self.reward not in REWARDS:
            raise ValueError(f"reward must be one of {list(REWARDS)}, got {self.reward!r}")


def reward_table(outcomes: Outcomes, cost: Tensor, cfg: PolicyTrainConfig) -> Tensor:
    """``(N, *space.shape)`` reward of every action on every image."""
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
            r = rewards[idx.to(dev)]  # (B, *space.shape)
            rows = torch.arange(len(idx), device=dev).expand(k, -1)
            got = r[(rows, *acts)]  # (k, B)
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
                    log.mean_cost.append(float((cost.to(dev)[tuple(a)] / cost.max()).mean()))
                    log.accuracy.append(float(outcomes.correct.to(dev)[idx.to(dev)][(sel, *a)].float().mean()))
    return policy.eval()


__all__ = [
    "BASELINES", "Outcomes", "PolicyTrainConfig", "REWARDS", "TrainLog", "collect_outcomes", "patch_embeddings",
    "reward_table", "train_policy"
]
