"""Input pipeline throughput on real-size JPEGs: eval transform, training augmentation, loader vs model.

Writes a folder of ImageNet-sized JPEGs (about 500x375, quality 90) cut from real photos, then
measures, with the library's one timer (``time_call``), in images per second:

* ``eval``: the 224 eval transform (resize shorter side 256, centre-crop 224, normalise) per image,
  in this process, and through a ``DataLoader`` with ``--workers`` processes;
* ``train-kornia``: the batched training augmentation of :mod:`adaperceiver.data.augment`
  (RandomResizedCrop 224 + flip, RandAugment (2, 20), random erasing 0.25, MixUp / CutMix) on a
  batch of 64 loaded at 256, and each of its stages alone;
* ``train-pil``: the same crop + flip done per image in PIL straight from the JPEG (decoded at
  reduced size with ``draft``), the alternative to the batched path; RandAugment has no PIL
  implementation short of writing its 14 ops by hand, so it is not part of this row;
* ``model``: ``adaperceiver_small`` (random weights, 224 px, full configuration) forward at batch 64.

Run it alone (it times things)::

    flock /work/heavy.lock python benchmarks/bench_data.py --photos /tmp/adaperceiver-photos --json data.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import adaperceiver.data.augment as augment_module
from adaperceiver import create_model
from adaperceiver.data.augment import TrainAugment
from adaperceiver.evaluation.cost import measure_latency, time_call

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PHOTO_DIRS = ("/tmp/adaperceiver-photos", "/usr/share/doc/opencv-doc/examples/data")


def write_jpegs(photos: list[Path], out: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` JPEGs of about 500x375 (either orientation), each a random crop of a real photo."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        with Image.open(photos[i % len(photos)]) as im:
            im = im.convert("RGB")
            w, h = im.size
            cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            size = (500, 375) if rng.random() < 0.7 else (375, 500)
            im = im.resize(size, Image.Resampling.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch))
            path = out / f"img_{i:04d}.jpg"
            im.save(path, quality=90)
            paths.append(path)
    return paths


def plain_eval_transform(size: int = 224, resize: int = 256):
    """Resize shorter side + centre crop + normalise in PIL: the fallback when data/transforms.py is absent."""
    from PIL import Image

    m, s = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)

    def load(path: Path) -> torch.Tensor:
        with Image.open(path) as im:
            im.draft("RGB", (resize, resize))
            im = im.convert("RGB")
            w, h = im.size
            scale = resize / min(w, h)
            im = im.resize((max(resize, round(w * scale)), max(resize, round(h * scale))), Image.Resampling.BILINEAR)
            w, h = im.size
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
            x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        return (x - m) / s

    return load


def eval_loader_fn(size: int, crop_pct: float):
    """The library's eval transform (data/transforms.py) when present, else the plain PIL one."""
    try:
        from adaperceiver.data.transforms import eval_transform
        from adaperceiver.models.data_config import DataConfig
    except ImportError:
        return plain_eval_transform(size, round(size / crop_pct)), "plain PIL (data/transforms.py absent)"
    tf = eval_transform(DataConfig(size, 3, MEAN, STD, "bilinear", crop_pct, "center"))
    return (lambda p: tf(tf.load(p))), "adaperceiver.data.transforms.eval_transform"


def pil_crop_flip(size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """RandomResizedCrop + flip per image in PIL from the JPEG, decoded at reduced size (bench only)."""
    from PIL import Image

    m, s = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    rng = np.random.default_rng(0)

    def load(path: Path) -> torch.Tensor:
        with Image.open(path) as im:
            w, h = im.size
            area = w * h * rng.uniform(*scale)
            aspect = float(np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]))))
            cw, ch = min(w, round((area * aspect) ** 0.5)), min(h, round((area / aspect) ** 0.5))
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            im.draft("RGB", (max(size, size * w // cw), max(size, size * h // ch)))  # crop still >= size
            f = im.size[0] / w
            im = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR,
                                          box=(x0 * f, y0 * f, (x0 + cw) * f, (y0 + ch) * f))
            if rng.random() < 0.5:
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        return (x - m) / s

    return load


class Files(Dataset):
    def __init__(self, paths: list[Path], load):
        self.paths, self.load = paths, load

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.load(self.paths[i]), 0


def per_image(load, paths: list[Path]) -> float:
    t = time_call(lambda: [load(p) for p in paths], len(paths), warmup=1, repeats=3)
    return t.throughput


def through_loader(load, paths: list[Path], workers: int, batch: int = 64) -> float:
    loader = DataLoader(Files(paths, load), batch_size=batch, num_workers=workers, persistent_workers=workers > 0)

    def epoch():
        for _ in loader:
            pass

    return time_call(epoch, len(paths), warmup=1, repeats=3).throughput


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", default=None, help="folder of real photos (default: the first of %s found)" % (PHOTO_DIRS,))
    ap.add_argument("--images", type=int, default=256, help="JPEGs to write")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-model", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    photo_dir = Path(args.photos) if args.photos else next((Path(d) for d in PHOTO_DIRS if Path(d).is_dir()), None)
    if photo_dir is None:
        raise SystemExit(f"no photo folder found in {PHOTO_DIRS}; give --photos (see /work/shared/DATA.md)")
    photos = sorted(p for p in photo_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    res: dict[str, object] = {
        "cpu": subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip(),
        "load_before": os.getloadavg()[0], "threads": args.threads, "workers": args.workers, "photos": len(photos)}
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(photos, Path(tmp), args.images)
        eval_load, res["eval_transform"] = eval_loader_fn(224, 0.875)
        res["eval_1proc_img_s"] = per_image(eval_load, paths)
        res["eval_loader_img_s"] = through_loader(eval_load, paths, args.workers)
        res["train_pil_crop_flip_1proc_img_s"] = per_image(pil_crop_flip(224), paths)
        # the batched path: the loader gives 256 px images (shorter side 256, centre crop), the device augments them
        load256, _ = eval_loader_fn(256, 1.0)
        res["train_load256_loader_img_s"] = through_loader(load256, paths, args.workers)
        batch = torch.stack([load256(p) for p in paths[:64]])
        targets = torch.arange(64) % 10
        gen = torch.Generator().manual_seed(0)
        stages = {
            "full": dict(),
            "crop_flip": dict(rand_augment=None, random_erasing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0),
            "rand_augment": dict(rrc_scale=None, hflip=False, random_erasing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0),
            "erasing": dict(rrc_scale=None, hflip=False, rand_augment=None, mixup_alpha=0.0, cutmix_alpha=0.0),
            "mix": dict(rrc_scale=None, hflip=False, rand_augment=None, random_erasing=0.0),
        }
        stages["rand_augment_one_group"] = stages["rand_augment"]
        for name, kw in stages.items():
            # kornia draws one op set per call; the pipeline calls it per group of RAND_AUGMENT_GROUP images
            augment_module.RAND_AUGMENT_GROUP = 64 if name == "rand_augment_one_group" else 8
            aug = TrainAugment(10, MEAN, STD, size=224, **kw)
            x = batch if name in ("full", "crop_flip") else batch[..., 16:240, 16:240].contiguous()
            res[f"train_kornia_{name}_img_s"] = time_call(lambda aug=aug, x=x: aug(x, targets, gen), 64, warmup=1, repeats=5).throughput
    if not args.skip_model:
        model = create_model("adaperceiver_small").eval()
        res["model_small_b64_fwd_img_s"] = measure_latency(model, None, 64, repeats=3).throughput
        res["eval_loader_over_model"] = res["eval_loader_img_s"] / res["model_small_b64_fwd_img_s"]
    res["load_after"] = os.getloadavg()[0]
    for k, v in res.items():
        print(f"{k:38s} {v:.1f}" if isinstance(v, float) else f"{k:38s} {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    start = time.time()
    main()
    print(f"took {time.time() - start:.0f} s")
