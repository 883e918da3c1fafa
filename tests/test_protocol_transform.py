"""The protocol's image transform: the whole image squashed to S x S, as the LAMDA line does, not open_clip's crop.

The reference is torchvision built here from the published recipe (Resize((S, S), bicubic) + CenterCrop(S)
+ CLIP's mean/std written out as numbers), not from the package's own transform code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from spacil.backbone import load_backbone
from spacil.config import list_presets, load_config
from spacil.data.datasets import ArraySource
from spacil.features.extract import feature_key_parts

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PROTOCOL_PRESETS = [p for p in list_presets() if p not in {"default", "partsworld_demo", "spa_protocol"}]


def protocol_reference(size: int) -> T.Compose:
    return T.Compose([T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                      T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])


def non_square_image(width: int = 97, height: int = 41) -> Image.Image:
    return Image.fromarray(np.random.default_rng(7).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize(("backbone_name", "size"), [("tiny-test", 32), ("partsworld-clip", 64)])
def test_squash_equals_the_protocol_recipe_on_a_non_square_image(backbone_name, size):
    backbone = load_backbone(backbone_name, device="cpu", resize="squash")
    image = non_square_image()
    got = backbone.preprocess(image)
    assert got.shape == (3, size, size)
    assert torch.equal(got, protocol_reference(size)(image))
    # open_clip's crop sees only the middle of the wide image: other pixels
    backbone.set_resize("crop")
    cropped = backbone.preprocess(image)
    assert cropped.shape == (3, size, size) and not torch.allclose(cropped, got, atol=1e-3)


def test_every_protocol_preset_uses_the_squash_transform():
    assert len(PROTOCOL_PRESETS) == 18
    for preset in PROTOCOL_PRESETS:
        assert load_config(preset).data.resize == "squash", preset
    assert load_config("default").data.resize == "crop"


def test_the_resize_choice_is_part_of_the_feature_cache_key():
    backbone = load_backbone("tiny-test", device="cpu")
    source = ArraySource(np.zeros((2, 8, 8, 3), dtype=np.uint8), np.array([0, 1]), ["a", "b"], "toy", "train")
    crop = feature_key_parts(source, backbone)
    assert "resize" not in crop["transform"]  # entries written before the setting existed stay valid
    backbone.set_resize("squash")
    squash = feature_key_parts(source, backbone)
    assert squash["transform"]["resize"] == "squash" and squash != crop


def test_unknown_resize_is_a_one_line_error():
    with pytest.raises(Exception, match="data.resize"):
        load_config("default", ["data.resize=stretch"])
    with pytest.raises(ValueError, match="data.resize"):
        load_backbone("tiny-test", device="cpu").set_resize("stretch")
