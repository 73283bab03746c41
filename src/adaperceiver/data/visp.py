"""The ViSP castel RGB-D frames (Debian ``visp-images-data``, extracted by the user): 30 real grey images
with uint16 depth, reprojected into the image. A pipeline check for the depth task, not a benchmark."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .dense_io import _check_split, _open, _size_hw, image_to_tensor, resize_image

VISP_DEPTH_SCALE = 0.000124986647  # metres per uint16 unit in the ViSP castel sequence
VISP_SEARCH = (
    "/usr/share/visp-images-data/ViSP-images/mbt-depth/castel",
    "/tmp/visp/usr/share/visp-images-data/ViSP-images/mbt-depth/castel",
)


def find_visp_castel(root: str | Path | None = None) -> Path | None:
    """The ``mbt-depth/castel`` folder: ``root``, ``$ADAPERCEIVER_VISP_DIR`` or a known location."""
    cands = [root] if root is not None else [os.environ.get("ADAPERCEIVER_VISP_DIR"), *VISP_SEARCH]
    for c in cands:
        if c and (Path(c) / "castel").is_dir() and (Path(c) / "depth_M_color.txt").is_file():
            return Path(c)
    return None


def _camera(xml: Path) -> tuple[float, float, float, float]:
    text = xml.read_text()
    block = re.search(r"<camera>(.*?)</camera>", text, re.S)
    if block is None:
        raise ValueError(f"{xml} has no <camera> block")
    vals = []
    for tag in ("px", "py", "u0", "v0"):
        m = re.search(rf"<{tag}>\s*([-+0-9.eE]+)\s*</{tag}>", block.group(1))
        if m is None:
            raise ValueError(f"{xml}: <camera> has no <{tag}>")
        vals.append(float(m.group(1)))
    return tuple(vals)  # type: ignore[return-value]


def read_visp_depth(path: str | Path) -> np.ndarray:
    """A ViSP ``depth_image_%04d.bin``: uint32 LE height, width, then uint16 LE pixels."""
    raw = Path(path).read_bytes()
    if len(raw) < 8:
        raise ValueError(f"{path}: too short for a ViSP depth header")
    h, w = (int(v) for v in np.frombuffer(raw[:8], "<u4"))
    if len(raw) != 8 + 2 * h * w:
        raise ValueError(f"{path}: header says {h}x{w} uint16 but the file has {len(raw) - 8} data bytes")
    return np.frombuffer(raw[8:], "<u2").reshape(h, w)


def register_depth(depth_m: np.ndarray, depth_cam, color_cam, color_M_depth: np.ndarray,
                   out_hw: tuple[int, int], color_hw: tuple[int, int]) -> np.ndarray:
    """Reproject a depth image into the colour camera at ``out_hw`` resolution (nearest surface wins)."""
    pxd, pyd, u0d, v0d = depth_cam
    pxc, pyc, u0c, v0c = color_cam
    sy, sx = out_hw[0] / color_hw[0], out_hw[1] / color_hw[1]
    v, u = np.nonzero(depth_m > 0)
    z = depth_m[v, u].astype(np.float64)
    pts = np.stack([(u - u0d) / pxd * z, (v - v0d) / pyd * z, z, np.ones_like(z)])
    pc = color_M_depth @ pts
    front = pc[2] > 1e-6
    pc = pc[:, front]
    uc = ((pxc * pc[0] / pc[2] + u0c) + 0.5) * sx - 0.5
    vc = ((pyc * pc[1] / pc[2] + v0c) + 0.5) * sy - 0.5
    ui, vi = np.round(uc).astype(np.int64), np.round(vc).astype(np.int64)
    inside = (ui >= 0) & (ui < out_hw[1]) & (vi >= 0) & (vi < out_hw[0])
    ui, vi, zc = ui[inside], vi[inside], pc[2, inside]
    order = np.argsort(-zc)  # far first, so the nearest surface is written last
    out = np.zeros(out_hw, np.float32)
    out[vi[order], ui[order]] = zc[order]
    return out


class ViSPCastelDepth(Dataset):
    """The 30 grey + depth frames of ViSP's ``mbt-depth/castel`` sequence, depth registered to the image.

    Extract (no install): ``apt-get download visp-images-data`` then
    ``dpkg-deb --fsys-tarfile visp-images-data_*.deb | tar -x --wildcards '*mbt-depth/castel/*'``.
    Depth is reprojected into the grey camera with the shipped intrinsics and extrinsic; ~40 % of
    pixels have no measurement (0). ``split``: frames ``0..23`` train, ``24..29`` val, ``None`` all.
    A pipeline check (one scene, 30 frames), not a benchmark.
    """

    def __init__(self, root: str | Path | None = None, split: str | None = "train", size: Sequence[int] = (96, 128),
                 train_frames: int = 24):
        found = find_visp_castel(root)
        if found is None:
            raise FileNotFoundError(
                f"ViSP castel frames not found (looked in {[str(root)] if root else ['$ADAPERCEIVER_VISP_DIR', *VISP_SEARCH]}); "
                f"extract them with 'apt-get download visp-images-data' and 'dpkg-deb --fsys-tarfile ... | tar -x'")
        split = _check_split(split)
        self.root = found
        frames = sorted(int(m.group(1)) for p in (found / "castel").glob("image_*.pgm")
                        if (m := re.fullmatch(r"image_(\d+)\.pgm", p.name)))
        missing = [f for f in frames if not (found / "castel" / f"depth_image_{f:04d}.bin").is_file()]
        if missing or not frames:
            raise ValueError(f"{found / 'castel'}: frames {missing[:5]} have no depth_image_XXXX.bin (or no frames at all)")
        self.frames = frames if split is None else (frames[:train_frames] if split == "train" else frames[train_frames:])
        self.size = _size_hw(size)
        self.color_cam = _camera(found / "chateau.xml")
        self.depth_cam = _camera(found / "chateau_depth.xml")
        depth_M_color = np.loadtxt(found / "depth_M_color.txt").reshape(4, 4)
        self.color_M_depth = np.linalg.inv(depth_M_color)
        self.in_chans, self.img_size, self.classes = 1, max(self.size), ()

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        f = self.frames[i]
        im = _open(self.root / "castel" / f"image_{f:04d}.pgm").convert("L")
        raw = read_visp_depth(self.root / "castel" / f"depth_image_{f:04d}.bin")
        depth = register_depth(raw.astype(np.float32) * VISP_DEPTH_SCALE, self.depth_cam, self.color_cam,
                               self.color_M_depth, self.size, (im.size[1], im.size[0]))
        x = resize_image(image_to_tensor(np.asarray(im), 1, (0.5,), (0.25,)), self.size)
        return x, torch.from_numpy(depth)[None]


__all__ = [
    "VISP_DEPTH_SCALE", "VISP_SEARCH", "ViSPCastelDepth", "find_visp_castel", "read_visp_depth", "register_depth"
]
