"""The ImageNet-style training augmentation, batched on the training device.

:class:`TrainAugment` follows the fine-tuning recipe of the paper's official configs, in the usual
order: RandomResizedCrop + horizontal flip, RandAugment on [0, 1] pixels, normalisation, random
erasing, then a random choice of MixUp or CutMix over the batch with mixed soft targets. The
image ops come from kornia (pure PyTorch, batched, runs on the accelerator); MixUp / CutMix are
written here because kornia's MixUp draws its weight uniformly, not from Beta(alpha), and both
pair images by a random permutation where the recipe pairs each image with its mirror in the
batch. Why kornia and not PIL per image, with measured images/s: docs/data.md.

Everything is drawn from the step's ``torch.Generator`` (kornia's own draws run under the global
RNG, forked and seeded from that generator), so the augmentation of a step is a pure function of
``(seed, step)`` and an exact resume sees the same images.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from . import RandomCropFlip

# RandAugment: kornia's magnitude scale is 0..30 exclusive (the 31-bin scale of torchvision's RandAugment)
RAND_AUGMENT_MAGNITUDE = (1, 29)
RAND_AUGMENT_MAX_OPS = 14  # kornia's default policy has 15 ops, drawn without replacement
# kornia draws one set of RandAugment ops per call: apply it to groups of this many images so a
# batch mixes several op pairs (the recipe draws per image; one pair for a whole batch is far from it)
RAND_AUGMENT_GROUP = 8


def _kornia():
    try:
        import kornia.augmentation as K
        from kornia.augmentation.auto import RandAugment
    except ImportError:
        raise ImportError("the ImageNet-style training augmentation needs kornia: pip install kornia") from None
    return K, RandAugment


@contextmanager
def seeded_global_rng(generator: torch.Generator, device: torch.device) -> Iterator[None]:
    """Run a block that draws from torch's global RNG (kornia does) with a seed taken from
    ``generator``, restoring the global state afterwards."""
    seed = int(torch.randint(0, 2 ** 62, (), generator=generator))
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _numpy_rng(generator: torch.Generator) -> np.random.Generator:
    """A numpy generator seeded from ``generator`` (torch has no seeded Beta sampler)."""
    return np.random.default_rng(int(torch.randint(0, 2 ** 62, (), generator=generator)))


def soft_targets(targets: Tensor, num_classes: int) -> Tensor:
    """Class ids ``(B,)`` as one-hot float rows ``(B, num_classes)``; soft targets pass through."""
    if targets.dim() == 2:
        return targets.float()
    return torch.nn.functional.one_hot(targets.long(), num_classes).float()


def mixup(images: Tensor, targets: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """``lam * x + (1 - lam) * x_mirror`` with each image's mirror in the batch (``x.flip(0)``);
    targets (soft rows) mixed with the same weight."""
    return images.mul(lam).add_(images.flip(0), alpha=1.0 - lam), targets * lam + targets.flip(0) * (1.0 - lam)


def cutmix_box(h: int, w: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box ``(y0, y1, x0, x1)`` of area about ``(1 - lam) * h * w`` centred uniformly in the image,
    clipped at its borders (so the pasted area is what the box covers, not what was asked)."""
    cut = np.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    return max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)


def cutmix(images: Tensor, targets: Tensor, box: tuple[int, int, int, int]) -> tuple[Tensor, Tensor]:
    """Paste ``box`` of each image's mirror in the batch; the label weight of the mirror is the
    fraction of the image the box covers."""
    y0, y1, x0, x1 = box
    out = images.clone()
    out[..., y0:y1, x0:x1] = images.flip(0)[..., y0:y1, x0:x1]
    pasted = (y1 - y0) * (x1 - x0) / (images.shape[-2] * images.shape[-1])
    return out, targets * (1.0 - pasted) + targets.flip(0) * pasted


class MixUpCutMix:
    """With probability ``prob`` per batch, MixUp (weight ~ Beta(mixup_alpha)) or CutMix (box area
    ~ Beta(cutmix_alpha)); when both are on, CutMix is chosen with probability ``switch_prob``.
    Returns soft targets ``(B, num_classes)`` always (one-hot rows on batches left unmixed), so a
    loss with ``label_smoothing`` smooths them like hard labels.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 0.5, prob: float = 1.0,
                 switch_prob: float = 0.5):
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha}, {cutmix_alpha}")
        if not 0 <= prob <= 1 or not 0 <= switch_prob <= 1:
            raise ValueError(f"prob and switch_prob must be in [0, 1], got {prob}, {switch_prob}")
        self.num_classes, self.mixup_alpha, self.cutmix_alpha = num_classes, mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob = prob, switch_prob

    def __call__(self, images: Tensor, targets: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        targets = soft_targets(targets, self.num_classes).to(images.device)
        rng = _numpy_rng(generator)
        if not (self.mixup_alpha or self.cutmix_alpha) or rng.random() >= self.prob:
            return images, targets
        use_cutmix = self.cutmix_alpha > 0 and (not self.mixup_alpha or rng.random() < self.switch_prob)
        if use_cutmix:
            lam = float(rng.beta(self.cutmix_alpha, self.cutmix_alpha))
            return cutmix(images, targets, cutmix_box(images.shape[-2], images.shape[-1], lam, rng))
        return mixup(images, targets, float(rng.beta(self.mixup_alpha, self.mixup_alpha)))


class TrainAugment:
    """RandomResizedCrop + flip, RandAugment, random erasing and MixUp / CutMix on a normalised batch.

    ``__call__(images, targets, generator) -> (images, targets)``: ``images`` are ``(B, C, H, W)``
    normalised with ``mean`` / ``std`` (as the datasets yield them), ``targets`` class ids ``(B,)``.
    The output images are ``size`` x ``size`` (default: the input's size), normalised the same
    way; the targets are soft ``(B, num_classes)`` rows when MixUp or CutMix is on, else the ids.
    ``rand_augment=(num_ops, magnitude)`` (magnitude on kornia's 0..30 scale) or None;
    ``random_erasing`` is the per-image probability of erasing one rectangle to the mean colour.
    """

    def __init__(self, num_classes: int, mean: Sequence[float], std: Sequence[float], *, size: int | None = None,
                 rrc_scale: tuple[float, float] | None = (0.08, 1.0), rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 hflip: bool = True, rand_augment: tuple[int, int] | None = (2, 20), random_erasing: float = 0.25,
                 mixup_alpha: float = 0.8, cutmix_alpha: float = 0.5, mix_prob: float = 1.0, switch_prob: float = 0.5):
        K, RandAugment = _kornia()
        self.num_classes, self.size = num_classes, size
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if rrc_scale is not None:
            lo, hi = rrc_scale
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"rrc_scale must satisfy 0 < min <= max <= 1, got {tuple(rrc_scale)}")
            self._rrc_args = dict(scale=tuple(rrc_scale), ratio=tuple(rrc_ratio))
        self.rrc_scale = rrc_scale
        self.flip = RandomCropFlip(padding=0, flip=True) if hflip else None
        self.rand_augment = None
        if rand_augment is not None and rand_augment[0] > 0:
            n, m = rand_augment
            lo, hi = RAND_AUGMENT_MAGNITUDE
            if not 1 <= n <= RAND_AUGMENT_MAX_OPS or not lo <= m <= hi:
                raise ValueError(f"rand_augment (num_ops, magnitude) needs num_ops in [1, {RAND_AUGMENT_MAX_OPS}] and "
                                 f"magnitude in [{lo}, {hi}], got {tuple(rand_augment)}")
            self.rand_augment = RandAugment(n=n, m=m)
        if not 0 <= random_erasing <= 1:
            raise ValueError(f"random_erasing must be a probability in [0, 1], got {random_erasing}")
        self.erasing = K.RandomErasing(p=random_erasing, value=0.0) if random_erasing > 0 else None
        self.mix = MixUpCutMix(num_classes, mixup_alpha, cutmix_alpha, mix_prob, switch_prob)
        self._K = K

    def _crop(self, x: Tensor) -> Tensor:
        size = self.size or x.shape[-1]
        if self.rrc_scale is None:
            if x.shape[-2:] == (size, size):
                return x
            return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                                   align_corners=False)
        return self._K.RandomResizedCrop((size, size), **self._rrc_args)(x)

    def _rand_augment(self, x: Tensor) -> Tensor:
        m = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        s = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        pixels = (x * s + m).clamp_(0.0, 1.0)
        grey = pixels.shape[1] == 1
        if grey:  # the colour ops need RGB; a grey image stays grey through them
            pixels = pixels.expand(-1, 3, -1, -1)
        out = torch.cat([self.rand_augment(g) for g in pixels.split(RAND_AUGMENT_GROUP)])
        if grey:
            out = out[:, :1]
        return (out - m) / s

    @torch.no_grad()
    def __call__(self, images: Tensor, targets: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        if images.dim() != 4:
            raise ValueError(f"TrainAugment needs a batch (B, C, H, W), got shape {tuple(images.shape)}")
        x = images.float()
        with seeded_global_rng(generator, x.device):
            x = self._crop(x)
        if self.flip is not None:
            x = self.flip(x, generator)
        if self.rand_augment is not None:
            with seeded_global_rng(generator, x.device):
                x = self._rand_augment(x)
        if self.erasing is not None:
            with seeded_global_rng(generator, x.device):
                x = self.erasing(x)
        if self.mix.mixup_alpha or self.mix.cutmix_alpha:
            return self.mix(x, targets, generator)
        return x, targets


__all__ = ["MixUpCutMix", "TrainAugment", "cutmix", "cutmix_box", "mixup", "seeded_global_rng", "soft_targets"]
