"""The open_clip adapter: projected global/patch/token features, frozen, deterministic."""

import pytest
import torch
import torch.nn.functional as F

from spacil.backbone import BackboneLoadError, load_backbone, resolve_backbone


def test_image_features_match_open_clip_and_manual_projection(tiny_backbone):
    model = tiny_backbone.model
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    feats = tiny_backbone.encode_images(x)
    assert feats.global_.shape == (3, 32)
    assert feats.patches.shape == (3, tiny_backbone.num_patches, 32) == (3, 16, 32)
    torch.testing.assert_close(feats.global_, model.encode_image(x), atol=1e-5, rtol=1e-5)
    # independent recomputation of the patch tokens: run the tower by hand, ln_post, then visual.proj
    v = model.visual
    with torch.no_grad():
        h = v.conv1(x).flatten(2).transpose(1, 2)
        h = torch.cat([v.class_embedding.expand(3, 1, -1), h], dim=1) + v.positional_embedding
        h = v.transformer(v.ln_pre(h))
        manual = v.ln_post(h[:, 1:]) @ v.proj
    torch.testing.assert_close(feats.patches, manual, atol=1e-5, rtol=1e-5)
    assert tiny_backbone.images_encoded >= 3


def test_text_features_eos_and_mask(tiny_backbone):
    texts = ["a photo of a cat.", "dog"]
    feats = tiny_backbone.encode_texts(texts)
    torch.testing.assert_close(feats.eos, tiny_backbone.model.encode_text(tiny_backbone.tokenize(texts)), atol=1e-5, rtol=1e-5)
    ids = tiny_backbone.tokenize(texts)
    # word tokens: everything strictly between start-of-text and end-of-text
    assert feats.mask[1].sum() == 1 and feats.mask[0].sum() == (ids[0] > 0).sum() - 2
    assert feats.tokens.shape[:2] == ids.shape
    # the eos token's projected feature sits at the position of the end-of-text id
    eos_pos = int(ids[0].argmax())
    torch.testing.assert_close(feats.tokens[0, eos_pos], feats.eos[0])


def test_frozen_and_deterministic(tiny_backbone):
    assert not any(p.requires_grad for p in tiny_backbone.model.parameters())
    assert not tiny_backbone.model.training
    again = load_backbone("tiny-test", device="cpu")
    assert again.fingerprint() == tiny_backbone.fingerprint()
    state = torch.random.get_rng_state()
    load_backbone("tiny-test", device="cpu")
    assert torch.equal(state, torch.random.get_rng_state()), "loading must not disturb the global RNG"


def test_names_resolve():
    assert resolve_backbone("openai/ViT-B-16").arch == "ViT-B-16-quickgelu"
    assert resolve_backbone("laion400m/ViT-B-16").pretrained == "laion400m_e32"
    assert resolve_backbone("ViT-B-32@random").pretrained is None
    with pytest.raises(ValueError, match="unknown backbone"):
        resolve_backbone("nope")
    with pytest.raises(FileNotFoundError):
        resolve_backbone("tiny-test", checkpoint="/does/not/exist.pt")


def test_local_checkpoint_is_loaded(tmp_path, tiny_backbone):
    # a checkpoint file with other weights: loading it must change the features accordingly
    state = {k: v.clone() for k, v in tiny_backbone.model.state_dict().items()}
    state["visual.proj"] = state["visual.proj"] * 2
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    loaded = load_backbone("tiny-test", checkpoint=path, device="cpu")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loaded.encode_images(x).global_, 2 * tiny_backbone.encode_images(x).global_,
                               atol=1e-5, rtol=1e-5)
    assert loaded.fingerprint() != tiny_backbone.fingerprint()


def test_missing_pretrained_weights_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(BackboneLoadError, match="could not load backbone"):
        load_backbone("ViT-B-32@laion2b_s34b_b79k", device="cpu")
