"""Where patch tokens are read (backbone.patch_layer / patch_path): checked against open_clip's own modules."""

import typing

import numpy as np
import pytest
import torch

from spacil.backbone import load_backbone
from spacil.backbone.clip_adapter import PATCH_PATHS
from spacil.config import BackboneConfig, load_config
from spacil.data.datasets import ArraySource
from spacil.errors import UsageError
from spacil.features.extract import feature_key_parts
from spacil.runs.run_folder import config_digest
from spacil.training.harness import prepare_data


DEEP = "partsworld-clip"  # shipped, 4 image blocks: layers 0 and -2 are different blocks, neither the last


def _images(size: int = 32) -> torch.Tensor:
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))


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
    backbone = load_backbone(DEEP, device="cpu")
    assert len(backbone.model.visual.transformer.resblocks) == 4
    images = _images(64)
    default = backbone.encode_images(images)
    backbone.set_patch_source(layer, "block")
    feats = backbone.encode_images(images)
    v = backbone.model.visual
    with torch.no_grad():
        reference = v.ln_post(_hooked_block_output(backbone.model, images, layer)[:, 1:]) @ v.proj
    torch.testing.assert_close(feats.patches, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats.global_, default.global_)  # the [CLS] feature is CLIP's, whatever the patches
    assert not torch.allclose(feats.patches, default.patches)


@pytest.mark.parametrize("layer", [1, -1])
def test_value_path_is_attention_with_each_token_attending_to_itself(layer):
    backbone = load_backbone(DEEP, device="cpu")
    images = _images(64)
    backbone.set_patch_source(layer, "value")
    feats = backbone.encode_images(images)
    v = backbone.model.visual
    block = v.transformer.resblocks[layer]
    with torch.no_grad():
        # the block's input: the output of the one before it, from open_clip's forward
        x = _hooked_block_output(backbone.model, images, layer - 1)
        y = block.ln_1(x)
        tokens = y.shape[1]
        only_self = torch.full((tokens, tokens), float("-inf")).fill_diagonal_(0.0)
        attended = block.attn(y, y, y, need_weights=False, attn_mask=only_self)[0]  # nn.MultiheadAttention itself
        reference = v.ln_post(attended[:, 1:]) @ v.proj
    torch.testing.assert_close(feats.patches, reference, atol=1e-5, rtol=1e-5)


def test_the_patch_source_is_part_of_the_cache_key_and_the_default_adds_nothing():
    backbone = load_backbone("tiny-test", device="cpu")
    source = ArraySource(np.zeros((2, 8, 8, 3), dtype=np.uint8), np.array([0, 1]), ["a", "b"], "toy", "train")
    default = feature_key_parts(source, backbone)
    assert "patch_tokens" not in default  # entries written before the setting existed stay valid
    n = len(backbone.model.visual.transformer.resblocks)
    backbone.set_patch_source(n - 1, "block")  # the last block named by its index is the default
    assert feature_key_parts(source, backbone) == default
    keys = []
    for layer, path in [(-2, "block"), (-1, "value"), (-2, "value")]:
        backbone.set_patch_source(layer, path)
        keys.append(feature_key_parts(source, backbone)["patch_tokens"])
    assert keys[0] == {"patch_layer": n - 2, "patch_path": "block"}
    assert len({str(k) for k in keys}) == 3


def test_a_wrong_patch_source_is_a_one_line_error():
    backbone = load_backbone("tiny-test", device="cpu")
    n = len(backbone.model.visual.transformer.resblocks)
    with pytest.raises(UsageError, match=f"backbone.patch_layer={n}: .* {-n}..{n - 1}"):
        backbone.set_patch_source(n, "block")
    with pytest.raises(UsageError, match="backbone.patch_path"):
        backbone.set_patch_source(-1, "query")
    with pytest.raises(Exception, match="patch_path"):
        load_config("default", ["backbone.patch_path=query"])
    assert typing.get_args(BackboneConfig.model_fields["patch_path"].annotation) == PATCH_PATHS


def test_the_value_path_needs_a_plain_attention_block():
    backbone = load_backbone("tiny-test", device="cpu")
    backbone.model.visual.transformer.resblocks[0].attn = torch.nn.Identity()  # as a custom block's attention
    with pytest.raises(UsageError, match="backbone.patch_path=value: .* use backbone.patch_path=block"):
        backbone.set_patch_source(0, "value")
    backbone.set_patch_source(0, "block")  # the block's output needs no attention internals


def test_run_keys_of_runs_made_before_the_setting_existed_stay_the_same():
    # digests printed by the code before backbone.patch_layer / patch_path existed (commit d3a17cb)
    before = {None: "3e2abce906c4b6e9a71d849d18f4d01edf8017ade5b481d8bdf3f64c05471ef8",
              "partsworld_demo": "c06194b00047fbc33558929e19e2ce51eb1a44c8ac25b8165170ca739d9928cc"}
    for preset, digest in before.items():
        assert config_digest(load_config(preset, [])) == digest
        assert config_digest(load_config(preset, ["backbone.patch_layer=-1", "backbone.patch_path=block"])) == digest
        assert config_digest(load_config(preset, ["backbone.patch_layer=-2"])) != digest
        assert config_digest(load_config(preset, ["backbone.patch_path=value"])) != digest


def test_a_comparison_refuses_variants_that_would_need_other_features(monkeypatch):
    from spacil.training import compare

    real = compare.variant_config

    def with_backbone_change(raw, variant, *args, **kwargs):
        cfg = real(raw, variant, *args, **kwargs)
        return cfg.model_copy(update={"backbone": cfg.backbone.model_copy(update={"patch_path": "value"})}) \
            if variant == "clsonly" else cfg

    monkeypatch.setattr(compare, "variant_config", with_backbone_change)
    with pytest.raises(UsageError, match="variant 'clsonly' changes the backbone section"):
        compare.prepare_variants(load_config(None, []), ["spa", "clsonly"], progress=False)


def test_a_run_reads_its_patches_where_the_config_says(image_folder, tmp_path):
    backbone = load_backbone("tiny-test", device="cpu")
    common = [f"data.root={image_folder}", "data.init_cls=2", "data.increment=2", f"cache.root={tmp_path / 'cache'}",
              f"run.output_dir={tmp_path / 'runs'}", "method.name=simplecil", "backbone.num_workers=0"]
    value = prepare_data(load_config(None, [*common, "backbone.patch_path=value"]), backbone=backbone, progress=False)
    default = prepare_data(load_config(None, common), backbone=backbone, progress=False)
    assert backbone.patch_source_description() == {}  # each run sets the source it was configured with
    assert np.allclose(np.asarray(value.train.global_), np.asarray(default.train.global_))
    assert not np.allclose(np.asarray(value.train.patches), np.asarray(default.train.patches))
