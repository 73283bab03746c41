"""Training augmentation (data/augment.py): determinism per (seed, step), each op's property, exact
resume with the ImageNet-style recipe on, the options' checks, precision and loader workers."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from adaperceiver.data.augment import MixUpCutMix, TrainAugment, cutmix, cutmix_box, mixup
from adaperceiver.errors import UserError
from adaperceiver.losses import cross_entropy
from adaperceiver.tasks import get_task
from adaperceiver.training import TrainConfig, Trainer
from adaperceiver.training.schedule import step_generator

pytestmark = pytest.mark.usefixtures("one_thread")
needs_kornia = pytest.mark.skipif(importlib.util.find_spec("kornia") is None, reason="kornia not installed")

TINY = dict(patch_size=4, embed_dim=16, num_heads=2, depth=2, num_latents=8, token_grans=(4, 8), widths=(8, 16))
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def batch(b=8, c=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, size, size, generator=g), torch.arange(b) % 5


@needs_kornia
def test_same_seed_and_step_give_the_same_batch_and_leave_the_global_rng_alone():
    aug = TrainAugment(5, MEAN, STD, size=12, rand_augment=(2, 20), random_erasing=0.5)
    x, y = batch()
    state = torch.get_rng_state()
    a = aug(x, y, step_generator(0, 7))
    b = aug(x, y, step_generator(0, 7))
    c = aug(x, y, step_generator(0, 8))
    assert torch.equal(state, torch.get_rng_state())  # kornia's draws ran in a forked, seeded RNG
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (8, 3, 12, 12) and a[1].shape == (8, 5)
    torch.testing.assert_close(a[1].sum(1), torch.ones(8))


def test_mixup_weight_is_the_target_weight():
    x, y = batch()
    soft = torch.nn.functional.one_hot(y, 5).float()
    out, t = mixup(x, soft, 0.3)
    torch.testing.assert_close(out, 0.3 * x + 0.7 * x.flip(0))
    torch.testing.assert_close(t.sum(1), torch.ones(8))
    assert float(t[0, y[0]]) == pytest.approx(0.3) and float(t[0, y[-1]]) == pytest.approx(0.7)
    # drawn from Beta(alpha): the image is mixed with exactly the weight its target says
    mix = MixUpCutMix(5, mixup_alpha=0.8, cutmix_alpha=0.0)
    out, t = mix(x, y, torch.Generator().manual_seed(1))
    lam = float(t[0, y[0]])
    assert 0 < lam < 1
    torch.testing.assert_close(out, lam * x + (1 - lam) * x.flip(0))


def test_cutmix_label_weight_is_the_pasted_area():
    x = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 20, 20).contiguous()  # image i is all i
    y = torch.arange(8) % 5
    soft = torch.nn.functional.one_hot(y, 5).float()
    rng = np.random.default_rng(0)
    for lam in (0.1, 0.5, 0.9):
        for _ in range(5):  # boxes near the border are clipped: the weight follows the clipped box
            out, t = cutmix(x, soft, cutmix_box(20, 20, lam, rng))
            pasted = float((out[0, 0] == 7).float().mean())  # image 0 received pixels of image 7
            assert float(t[0, y[7]]) == pytest.approx(pasted)
            torch.testing.assert_close(t.sum(1), torch.ones(8))
    mix = MixUpCutMix(5, mixup_alpha=0.0, cutmix_alpha=0.5)
    out, t = mix(x, y, torch.Generator().manual_seed(3))
    assert float(t[0, y[7]]) == pytest.approx(float((out[0, 0] == 7).float().mean()))


@needs_kornia
def test_erasing_crop_and_grey_images():
    x, y = batch(c=1)
    aug = TrainAugment(5, (0.3,), (0.4,), size=10, rand_augment=(2, 15), random_erasing=1.0, mixup_alpha=0.0,
                       cutmix_alpha=0.0)
    out, t = aug(x, y, step_generator(1, 0))
    assert out.shape == (8, 1, 10, 10) and torch.equal(t, y)  # no mixing: class ids pass through
    assert all(bool((img == 0).any()) for img in out)  # every image had a rectangle erased to the mean colour
    with pytest.raises(ValueError, match="rand_augment"):
        TrainAugment(5, MEAN, STD, rand_augment=(2, 30))
    with pytest.raises(ValueError, match="rrc_scale"):
        TrainAugment(5, MEAN, STD, rrc_scale=(0.5, 0.2))


def test_label_smoothing_works_with_soft_targets():
    logits, y = torch.randn(2, 3, 6, 5), torch.tensor([0, 4, 2, 1, 3, 0])
    ce = cross_entropy(0.1)
    soft = torch.nn.functional.one_hot(y, 5).float()
    torch.testing.assert_close(ce(logits[0, 0], soft), ce(logits[0, 0], y))
    torch.testing.assert_close(ce.per_readout(logits, soft), ce.per_readout(logits, y))
    mixed = 0.3 * soft + 0.7 * soft.flip(0)
    expect = torch.stack([torch.stack([ce(logits[i, j], mixed) for j in range(3)]) for i in range(2)])
    torch.testing.assert_close(ce.per_readout(logits, mixed), expect)


@pytest.mark.parametrize("kw, match", [
    (dict(rand_augment=(2, 30)), r"rand_augment must be N,M with N in \[0, 14\].*M in \[1, 29\]"),
    (dict(rrc_scale=(0.5, 0.2)), "rrc_scale must be MIN,MAX"),
    (dict(rrc_scale=(0.0, 1.0)), r"rrc_scale.*\(0, 1\]"),
    (dict(mix_prob=1.5), r"mix_prob.*\[0, 1\]"),
    (dict(random_erasing=-0.1), r"random_erasing.*\[0, 1\]"),
    (dict(mixup_alpha=-1.0), "mixup_alpha.*>= 0"),
    (dict(recipe="timm"), "recipe must be one of"),
    (dict(precision="fp8"), "precision must be one of"),
])
def test_bad_augmentation_options_name_the_option_and_range(kw, match):
    with pytest.raises(UserError, match=match):
        TrainConfig(**kw)


def test_recipe_values_and_overrides():
    assert TrainConfig().augmentation()["mixup_alpha"] == 0.0
    opts = TrainConfig(recipe="imagenet", rand_augment=(2, 9), cutmix_alpha=0.0).augmentation()
    assert opts == dict(rrc_scale=(0.08, 1.0), rand_augment=(2, 9), random_erasing=0.25, mixup_alpha=0.8,
                        cutmix_alpha=0.0, mix_prob=1.0)
    assert TrainConfig(recipe="distill").augmentation()["rand_augment"] == (2, 15)


def cfg_for(tmp_path, name="run", **kw) -> TrainConfig:
    base = dict(dataset="digits", train_subset=64, val_subset=32, model_overrides=TINY, epochs=2, batch_size=16,
                lr=3e-3, warmup_steps=2, out_dir=str(tmp_path), name=name, progress=False, log_every=2,
                recipe="imagenet", rand_augment=(2, 15))
    base.update(kw)
    return TrainConfig(**base)


@needs_kornia
def test_resume_is_exact_with_the_imagenet_recipe(tmp_path):
    pytest.importorskip("sklearn")
    full = Trainer(cfg_for(tmp_path, "full", checkpoint_every=3), get_task("classification"))
    full.fit()
    assert isinstance(full.augment, TrainAugment)
    Trainer(cfg_for(tmp_path, "cut", checkpoint_every=3, max_steps=5), get_task("classification")).fit()
    second = Trainer(cfg_for(tmp_path, "cut", checkpoint_every=3), get_task("classification"))
    assert second.fit(resume=True).finished
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, second.model.state_dict()[k]), k
    with pytest.raises(UserError, match="mixup_alpha"):
        Trainer(cfg_for(tmp_path, "cut", mixup_alpha=0.2), get_task("classification")).fit(resume=True)
    saved = json.loads((tmp_path / "cut" / "config.json").read_text())["train"]
    assert saved["precision"] == "fp32" and saved["recipe"] == "imagenet"


@needs_kornia
def test_teacher_sees_the_mixed_image(tmp_path):
    pytest.importorskip("sklearn")
    seen = []

    def teacher(images):
        seen.append(images.clone())
        return torch.zeros(images.shape[0], 10)

    trainer = Trainer(cfg_for(tmp_path, cutmix_alpha=0.0), get_task("classification"), teacher=teacher)
    images, targets = next(iter(trainer.train_loader(0, 0)))
    out = trainer.make_batch(images, targets, step_generator(0, 0))
    assert torch.equal(seen[0], out.images) and out.targets.shape == (16, 10)
    assert not torch.equal(out.images, images)


@needs_kornia
def test_precision_default_and_fp16_refused_on_cpu(tmp_path):
    pytest.importorskip("sklearn")
    assert Trainer(cfg_for(tmp_path, recipe="basic"), get_task("classification")).cfg.precision == "fp32"
    with pytest.raises(UserError, match="fp16-mixed needs a CUDA device"):
        Trainer(cfg_for(tmp_path, precision="fp16-mixed"), get_task("classification"))
    bf16 = Trainer(cfg_for(tmp_path, "bf16", recipe="basic", precision="bf16-mixed", max_steps=2), get_task("classification"))
    assert bf16.fit().step == 2


def test_loader_workers_do_not_change_the_batches(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for cls in ("a", "b"):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "data" / split / cls / f"{i}.png")
    batches = {}
    for workers in (0, 2):
        cfg = TrainConfig(dataset="imagefolder", data_dir=str(tmp_path / "data"), image_size=8, model_overrides=TINY,
                          batch_size=4, out_dir=str(tmp_path), progress=False, num_workers=workers)
        trainer = Trainer(cfg, get_task("classification"))
        batches[workers] = [b for _, b in zip(range(3), trainer.train_loader(1, 0))]
    assert Trainer(TrainConfig(dataset="imagefolder", data_dir=str(tmp_path / "data"), image_size=8, model_overrides=TINY,
                               batch_size=4, out_dir=str(tmp_path), progress=False),
                   get_task("classification")).num_workers == min(4, os.cpu_count())
    for (x0, y0), (x2, y2) in zip(batches[0], batches[2]):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)


@needs_kornia
def test_fp16_scaler_path_runs_and_resumes(tmp_path, monkeypatch):
    """The fp16-mixed code path (scaler scale / unscale / step / state in the checkpoint), exercised on the
    CPU by letting the check through (torch's CPU autocast and GradScaler accept fp16)."""
    pytest.importorskip("sklearn")
    import adaperceiver.training.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "resolve_precision", lambda p, d: "fp16-mixed")
    trainer = Trainer(cfg_for(tmp_path, recipe="basic", max_steps=3), get_task("classification"))
    assert trainer.scaler.is_enabled() and trainer.fit().step == 3
    state = torch.load(tmp_path / "run" / "checkpoints" / "step_00000003" / "trainer_state.pt", weights_only=True)
    assert state["scaler"]["scale"] == trainer.scaler.get_scale()
