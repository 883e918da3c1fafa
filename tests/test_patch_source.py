"""Where patch tokens are read (backbone.patch_layer / patch_path): checked against open_clip's own modules."""

import numpy as np
import pytest
import torch

from spacil.backbone import load_backbone
from spacil.config import load_config
from spacil.data.datasets import ArraySource
from spacil.errors import UsageError
from spacil.features.extract import feature_key_parts
from spacil.training.harness import prepare_data


def _images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _hooked_block_output(model, images: torch.Tensor, layer: int) -> torch.Tensor:
    """Reference: the block's output caught by a forward hook during open_clip's own encode_image."""
    caught = {}
    handle = model.visual.transformer.resblocks[layer].register_forward_hook(
        lambda _m, _i, out: caught.setdefault("x", out))
    try:
        with torch.no_grad():
            model.encode_image(images)
    finally:
        handle.remove()
    return caught["x"]


@pytest.mark.parametrize("layer", [0, -2])
def test_an_earlier_blocks_tokens_match_a_hook_on_open_clips_forward(layer):
    backbone = load_backbone("tiny-test", device="cpu")
    default = backbone.encode_images(_images())
    backbone.set_patch_tokens(layer, "block")
    feats = backbone.encode_images(_images())
    v = backbone.model.visual
    with torch.no_grad():
        reference = v.ln_post(_hooked_block_output(backbone.model, _images(), layer)[:, 1:]) @ v.proj
    torch.testing.assert_close(feats.patches, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats.global_, default.global_)  # the [CLS] feature is CLIP's, whatever the patches
    assert not torch.allclose(feats.patches, default.patches)


def test_value_path_is_attention_with_each_token_attending_to_itself():
    backbone = load_backbone("tiny-test", device="cpu")
    backbone.set_patch_tokens(-1, "value")
    feats = backbone.encode_images(_images())
    v = backbone.model.visual
    last = v.transformer.resblocks[-1]
    with torch.no_grad():
        # the input of the last block: the output of the one before it, from open_clip's forward
        x = _hooked_block_output(backbone.model, _images(), -2)
        y = last.ln_1(x)
        tokens = y.shape[1]
        only_self = torch.full((tokens, tokens), float("-inf")).fill_diagonal_(0.0)
        attended = last.attn(y, y, y, need_weights=False, attn_mask=only_self)[0]  # nn.MultiheadAttention itself
        reference = v.ln_post(attended[:, 1:]) @ v.proj
    torch.testing.assert_close(feats.patches, reference, atol=1e-5, rtol=1e-5)


def test_the_patch_source_is_part_of_the_cache_key_and_the_default_adds_nothing():
    backbone = load_backbone("tiny-test", device="cpu")
    source = ArraySource(np.zeros((2, 8, 8, 3), dtype=np.uint8), np.array([0, 1]), ["a", "b"], "toy", "train")
    default = feature_key_parts(source, backbone)
    assert "patch_tokens" not in default  # entries written before the setting existed stay valid
    n = len(backbone.model.visual.transformer.resblocks)
    backbone.set_patch_tokens(n - 1, "block")  # the last block named by its index is the default
    assert feature_key_parts(source, backbone) == default
    keys = []
    for layer, path in [(-2, "block"), (-1, "value"), (-2, "value")]:
        backbone.set_patch_tokens(layer, path)
        keys.append(feature_key_parts(source, backbone)["patch_tokens"])
    assert keys[0] == {"patch_layer": n - 2, "patch_path": "block"}
    assert len({str(k) for k in keys}) == 3


def test_a_wrong_patch_source_is_a_one_line_error():
    backbone = load_backbone("tiny-test", device="cpu")
    n = len(backbone.model.visual.transformer.resblocks)
    with pytest.raises(UsageError, match=f"backbone.patch_layer={n}: .* {-n}..{n - 1}"):
        backbone.set_patch_tokens(n, "block")
    with pytest.raises(UsageError, match="backbone.patch_path"):
        backbone.set_patch_tokens(-1, "query")
    with pytest.raises(Exception, match="patch_path"):
        load_config("default", ["backbone.patch_path=query"])


def test_a_run_reads_its_patches_where_the_config_says(image_folder, tmp_path):
    backbone = load_backbone("tiny-test", device="cpu")
    common = [f"data.root={image_folder}", "data.init_cls=2", "data.increment=2", f"cache.root={tmp_path / 'cache'}",
              f"run.output_dir={tmp_path / 'runs'}", "method.name=simplecil", "backbone.num_workers=0"]
    value = prepare_data(load_config(None, [*common, "backbone.patch_path=value"]), backbone=backbone, progress=False)
    default = prepare_data(load_config(None, common), backbone=backbone, progress=False)
    assert backbone.patch_source_description() == {}  # each run sets the source it was configured with
    assert np.allclose(np.asarray(value.train.global_), np.asarray(default.train.global_))
    assert not np.allclose(np.asarray(value.train.patches), np.asarray(default.train.patches))
