"""Write Fashion-MNIST out as an image folder (grey 28 px PNGs), to check that training and sweeping
through ``imagefolder`` reproduce the built-in loader (docs/data.md, "Image folder vs built-in").

Layout: ``OUT/train/<NN_class>/<index>.png`` (60,000) and ``OUT/val/<NN_class>/<index>.png`` (10,000);
class folders carry the label number first so that their sorted order is the built-in label order
(``/`` in ``T-shirt/top`` becomes ``_``)::

    python benchmarks/fmnist_to_folder.py --out /tmp/fmnist-png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from adaperceiver.data.classification import FASHION_MNIST_CLASSES, read_fashion_mnist


def write_folder(out: Path, root: str | None = None) -> dict[str, int]:
    counts = {}
    for split in ("train", "val"):
        images, labels = read_fashion_mnist(split, root)
        dirs = [out / split / f"{i:02d}_{name.replace('/', '_')}" for i, name in enumerate(FASHION_MNIST_CLASSES)]
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        for i, (img, label) in enumerate(zip(images, labels)):
            path = dirs[int(label)] / f"{i:05d}.png"
            if not path.is_file():
                Image.fromarray(img, "L").save(path)
        counts[split] = len(images)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder to write (train/ and val/ inside)")
    ap.add_argument("--root", default=None, help="Fashion-MNIST IDX folder (default: the Debian package's)")
    args = ap.parse_args()
    counts = write_folder(Path(args.out), args.root)
    print(f"wrote {counts['train']} train + {counts['val']} val PNGs under {args.out}")


if __name__ == "__main__":
    main()
