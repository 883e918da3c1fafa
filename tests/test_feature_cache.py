"""The feature cache: encode once, reuse, refuse stale or corrupt entries, handle bad images."""

import json

import numpy as np
import pytest
import torch

from spacil.data.datasets import DatasetError, ImageFolderSource
from spacil.features import CacheError, FeatureCache, get_features
from spacil.features.extract import feature_key_parts
from spacil.features.cache import feature_key


def test_extract_then_reuse_without_encoding(image_folder, tmp_path, tiny_backbone):
    source = ImageFolderSource(image_folder, "train")
    cache = FeatureCache(tmp_path / "cache")
    before = tiny_backbone.images_encoded
    first = get_features(source, tiny_backbone, cache, batch_size=5, num_workers=0, progress=False)
    assert tiny_backbone.images_encoded - before == len(source) == 24
    assert first.global_.dtype == np.float16 and first.patches.shape == (24, 16, 32)
    # the stored rows equal a direct encoder pass (up to fp16 storage)
    direct = tiny_backbone.encode_images(torch.stack([tiny_backbone.preprocess(source.load(i)) for i in range(3)]))
    np.testing.assert_allclose(first.global_[:3], direct.global_.numpy(), atol=2e-2, rtol=1e-2)
    np.testing.assert_allclose(first.patches[:3], direct.patches.numpy(), atol=2e-2, rtol=1e-2)
    assert first.labels.tolist() == np.repeat(np.arange(4), 6).tolist()

    encoded = tiny_backbone.images_encoded
    second = get_features(source, tiny_backbone, FeatureCache(tmp_path / "cache", verify="full"), progress=False)
    assert tiny_backbone.images_encoded == encoded, "a cache hit must not run the encoder"
    np.testing.assert_array_equal(second.patches, first.patches)


def test_changed_image_changes_the_key(image_folder, tiny_backbone):
    source = ImageFolderSource(image_folder, "test")
    key = feature_key(feature_key_parts(source, tiny_backbone))
    path = image_folder / "test" / "class_00" / "img_000.png"
    path.write_bytes(path.read_bytes() + b"\0")  # same image, different bytes
    assert feature_key(feature_key_parts(ImageFolderSource(image_folder, "test"), tiny_backbone)) != key


def _entry(tmp_path, image_folder, tiny_backbone):
    source = ImageFolderSource(image_folder, "test")
    cache = FeatureCache(tmp_path / "cache")
    feats = get_features(source, tiny_backbone, cache, num_workers=0, progress=False)
    return source, cache, feats.location


def test_truncated_file_is_refused(image_folder, tmp_path, tiny_backbone):
    source, cache, folder = _entry(tmp_path, image_folder, tiny_backbone)
    data = (folder / "patches.npy").read_bytes()
    (folder / "patches.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(CacheError, match="truncated"):
        get_features(source, tiny_backbone, cache, progress=False)


def test_tampered_file_is_refused_by_full_verify(image_folder, tmp_path, tiny_backbone):
    source, cache, folder = _entry(tmp_path, image_folder, tiny_backbone)
    arr = np.load(folder / "global.npy", mmap_mode="r+")
    arr[0, 0] += 1
    arr.flush()
    del arr
    with pytest.raises(CacheError, match="checksum"):
        get_features(source, tiny_backbone, FeatureCache(tmp_path / "cache", verify="full"), progress=False)


def test_stale_manifest_and_missing_manifest_are_refused(image_folder, tmp_path, tiny_backbone):
    source, cache, folder = _entry(tmp_path, image_folder, tiny_backbone)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["key"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="stale"):
        get_features(source, tiny_backbone, cache, progress=False)
    (folder / "manifest.json").unlink()
    with pytest.raises(CacheError, match="no manifest"):
        get_features(source, tiny_backbone, cache, progress=False)


def _corrupt(image_folder):
    bad = image_folder / "train" / "class_01" / "img_002.png"
    bad.write_bytes(b"not a png at all")
    return bad


def test_bad_image_skipped_and_named(image_folder, tmp_path, tiny_backbone, caplog):
    _corrupt(image_folder)
    source = ImageFolderSource(image_folder, "train")
    with caplog.at_level("WARNING"):
        feats = get_features(source, tiny_backbone, FeatureCache(tmp_path / "c"), bad_images="skip",
                             num_workers=0, progress=False)
    assert len(feats) == 23 and feats.skipped == ["train/class_01/img_002.png"]
    assert "class_01/img_002.png" in caplog.text
    assert "train/class_01/img_002.png" not in feats.sample_ids
    assert (feats.labels == 1).sum() == 5


def test_bad_image_error_policy(image_folder, tmp_path, tiny_backbone):
    _corrupt(image_folder)
    source = ImageFolderSource(image_folder, "train")
    with pytest.raises(DatasetError, match="img_002.png"):
        get_features(source, tiny_backbone, FeatureCache(tmp_path / "c"), bad_images="error", num_workers=0,
                     progress=False)
    assert not any((tmp_path / "c").rglob("manifest.json")), "a failed extraction must leave no entry"


def test_grayscale_and_cmyk_images_are_converted(image_folder, tmp_path, tiny_backbone):
    from PIL import Image

    folder = image_folder / "train" / "class_00"
    Image.new("L", (30, 30), 128).save(folder / "gray.png")
    Image.new("CMYK", (30, 30), (10, 20, 30, 0)).save(folder / "cmyk.jpg")
    feats = get_features(ImageFolderSource(image_folder, "train"), tiny_backbone, FeatureCache(tmp_path / "c"),
                         num_workers=0, progress=False)
    assert len(feats) == 26 and not feats.skipped
