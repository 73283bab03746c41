"""The 224 px eval transform: PIL per image (the library's) against kornia, on real-size JPEGs.

Makes a folder of JPEGs (500-800 px, quality 90) from the real photos of opencv-doc / darknet
(``.ci/fetch_photos.sh``; random crops, flips and scales, so no two files are alike), then times, one
process and one torch thread, the whole path file -> normalised ``(3, 224, 224)`` tensor of:

* ``pil``: :class:`adaperceiver.data.transforms.EvalTransform` (JPEG ``draft`` to the smallest DCT
  scale >= 256 px, PIL resize of the shorter side to 256, centre crop 224, normalise);
* ``pil_nodraft``: the same without ``draft`` (full-size decode);
* ``kornia``: full-size decode with PIL, then kornia's antialiased resize of the shorter side,
  centre crop and normalise on the tensor (per image: the images differ in size until cropped);
* ``pil_draft_kornia``: reduced decode (``draft``) then kornia for the rest.

Rounds alternate the methods so machine noise hits all alike; the median images/s per method and the
ratio to ``pil`` are printed (and written as JSON with ``--out``). Run it alone::

    flock /work/heavy.lock python benchmarks/bench_eval_transform.py --images 96 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

import numpy as np
import torch

from adaperceiver.data.transforms import EvalTransform, open_image, pil_to_tensor
from adaperceiver.evaluation.cost import time_call
from adaperceiver.models.data_config import reference_data_config

PHOTOS = ("eagle.jpg", "dog.jpg", "giraffe.jpg", "baboon.jpg", "orange.jpg", "apple.jpg", "butterfly.jpg",
          "squirrel_cls.jpg")


def make_jpegs(src: Path, dest: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` JPEGs of 500-800 px on the longer side cut from the photos in ``src`` (reused when present)."""
    from PIL import Image, ImageOps

    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = [Image.open(src / p).convert("RGB") for p in PHOTOS if (src / p).is_file()]
    if not photos:
        raise SystemExit(f"no photos in {src}: run .ci/fetch_photos.sh (or set ADAPERCEIVER_PHOTOS)")
    out = []
    for i in range(n):
        path = dest / f"img_{i:04d}.jpg"
        out.append(path)
        if path.is_file():
            continue
        im = photos[i % len(photos)]
        w, h = im.size
        cw, ch = int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        im = im.crop((x0, y0, x0 + cw, y0 + ch))
        if rng.random() < 0.5:
            im = ImageOps.mirror(im)
        scale = rng.uniform(500, 800) / max(im.size)
        im = im.resize((round(im.size[0] * scale), round(im.size[1] * scale)), Image.Resampling.BICUBIC)
        im.save(path, quality=90)
    return out


def kornia_transform(cfg, draft: bool):
    import kornia

    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)

    def run(path: Path) -> torch.Tensor:
        im = open_image(path, cfg.resize_size if draft else None).convert("RGB")
        x = pil_to_tensor(im).unsqueeze(0)
        x = kornia.geometry.transform.resize(x, cfg.resize_size, side="short", interpolation=cfg.interpolation,
                                             antialias=True)
        x = kornia.geometry.transform.center_crop(x, (cfg.input_size, cfg.input_size))
        return ((x - mean) / std)[0]

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", default=os.environ.get("ADAPERCEIVER_PHOTOS", "/tmp/adaperceiver-photos"))
    ap.add_argument("--folder", default="/tmp/adaperceiver-bench-jpegs", help="where the generated JPEGs go")
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    files = make_jpegs(Path(args.photos), Path(args.folder), args.images)
    cfg = reference_data_config(224)
    pil = EvalTransform(cfg)
    methods = {"pil": pil, "pil_nodraft": EvalTransform(cfg, draft=False), "kornia": kornia_transform(cfg, False),
               "pil_draft_kornia": kornia_transform(cfg, True)}
    ref = torch.stack([pil(f) for f in files[:8]])
    for name, fn in methods.items():  # warm-up, and every method must give (nearly) the library's tensor
        got = torch.stack([fn(f) for f in files[:8]])
        print(f"{name:>17}: mean |diff| to pil {float((got - ref).abs().mean()):.4f} (normalised units)")
    rates: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(args.rounds):
        order = list(methods) if r % 2 == 0 else list(reversed(methods))
        for name in order:
            fn = methods[name]
            t = time_call(lambda fn=fn: [fn(f) for f in files], batch_size=len(files), warmup=0, repeats=1)
            rates[name].append(len(files) / (t.median_ms / 1000.0))
    base = statistics.median(rates["pil"])
    result = {"images": len(files), "rounds": args.rounds, "threads": 1, "cpu": platform.processor() or platform.machine(),
              "load": os.getloadavg(), "images_per_s": {m: round(statistics.median(v), 1) for m, v in rates.items()},
              "ratio_to_pil": {m: round(statistics.median(v) / base, 3) for m, v in rates.items()}}
    for m in methods:
        print(f"{m:>17}: {result['images_per_s'][m]:7.1f} images/s  ({result['ratio_to_pil'][m]:.2f} x pil)")
    print(f"load average {result['load']}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
