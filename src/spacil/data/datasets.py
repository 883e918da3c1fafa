"""Image datasets as plain lists of (image, label) records with a content hash.

A dataset split here is an :class:`ImageSource`: it knows its class names, its labels, how to load
image ``i`` as RGB, and a hash of its content. The hash is what makes the feature cache safe: change a
file, a label or the class list and the cache key changes with it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import SpacilError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DATA_ROOT_ENV = "SPACIL_DATA_ROOT"


class DatasetError(SpacilError, ValueError):
    """A dataset that cannot be loaded as asked; the message says what is wrong and where."""


class BadImageError(DatasetError):
    """One image file that cannot be decoded."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"unreadable image {path}: {reason}")
        self.path = path
        self.reason = reason


class ImageSource(ABC):
    """One split of a dataset: class names, labels (original label space) and image loading."""

    dataset: str
    split: str
    class_names: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @abstractmethod
    def load(self, index: int) -> Image.Image:
        """Image ``index`` as RGB; raises :class:`BadImageError` if it cannot be decoded."""

    @abstractmethod
    def sample_id(self, index: int) -> str:
        """A stable human-readable identity of sample ``index`` (relative path, array index)."""

    @abstractmethod
    def content_hash(self) -> str:
        """sha256 over everything that determines the images and labels of this split."""

    def fingerprint(self) -> str | None:
        """A cheap identity of the split (no image read), under which its content hash can be recorded once;
        ``None`` where computing the content hash is cheap anyway (images already in memory)."""
        return None


def _open_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken files
        raise BadImageError(str(path), f"{exc.__class__.__name__}: {exc}") from None


class ImageFolderSource(ImageSource):
    """``root/<split>/<class>/<image>``; class names are the sorted folder names (or ``root/classes.txt``).

    ``classes.txt`` (one name per line) fixes the label order when present, so a dataset whose canonical
    order is not alphabetical (and subsets of a larger dataset) load with the right labels. ``folders``
    (same length as ``class_names``) names the folder of each class where it is spelt otherwise
    (a processed release's ``001.Black_footed_Albatross`` for ``Black_footed_Albatross``).
    """

    def __init__(self, root: Path | str, split: str, dataset: str = "image_folder",
                 class_names: list[str] | None = None, folders: list[str] | None = None) -> None:
        self.root = Path(root).expanduser()
        self.dataset = dataset
        self.split = split
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise DatasetError(f"{dataset}: no folder {split_dir} (expected root/{split}/<class>/<images>)")
        found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
        if class_names is None:
            listing = self.root / "classes.txt"
            class_names = _read_lines(listing) if listing.is_file() else found
        self.class_names = list(class_names)
        self.folders = list(folders) if folders is not None else list(self.class_names)
        if len(self.folders) != len(self.class_names):
            raise DatasetError(f"{dataset}: {len(self.folders)} folder names for {len(self.class_names)} classes")
        unknown = sorted(set(found) - set(self.folders))
        if unknown:
            raise DatasetError(f"{dataset}: folders {unknown[:5]} in {split_dir} are not in the class list")
        paths: list[str] = []
        labels: list[int] = []
        empty: list[str] = []
        for label, (name, folder_name) in enumerate(zip(self.class_names, self.folders)):
            folder = split_dir / folder_name
            files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS)) if folder.is_dir() else []
            if not files:
                empty.append(name)
            paths.extend(f"{folder_name}/{f}" for f in files)
            labels.extend([label] * len(files))
        if empty:
            raise DatasetError(f"{dataset}: {len(empty)} classes have no images in {split_dir}: {empty[:5]}")
        self.relative_paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)

    def load(self, index: int) -> Image.Image:
        return _open_rgb(self.root / self.split / self.relative_paths[index])

    def sample_id(self, index: int) -> str:
        return f"{self.split}/{self.relative_paths[index]}"

    def fingerprint(self) -> str:
        """sha256 of class names, relative paths, labels, file sizes and modification times: one ``stat`` per
        file instead of reading it (a file rewritten with the same size and time goes unnoticed: that is what
        ``cache.verify=full`` re-checks)."""
        digest = hashlib.sha256(b"image-folder-fingerprint-v1\n")
        digest.update("\n".join(self.class_names).encode())
        for rel, label in zip(self.relative_paths, self.labels.tolist()):
            st = os.stat(self.root / self.split / rel)
            digest.update(f"\n{rel}\t{label}\t{st.st_size}\t{st.st_mtime_ns}".encode())
        return digest.hexdigest()

    def content_hash(self) -> str:
        digest = hashlib.sha256()
        digest.update("\n".join(self.class_names).encode())
        for rel, label in zip(self.relative_paths, self.labels.tolist()):
            digest.update(f"\n{rel}\t{label}\t".encode())
            digest.update(hashlib.sha256((self.root / self.split / rel).read_bytes()).digest())
        return digest.hexdigest()


class ArraySource(ImageSource):
    """Images held in a uint8 array [N, H, W, 3] (CIFAR-style datasets)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, class_names: list[str], dataset: str, split: str) -> None:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise DatasetError(f"{dataset}: expected uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = list(class_names)
        self.dataset = dataset
        self.split = split

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])

    def sample_id(self, index: int) -> str:
        return f"{self.split}/{index}"

    def content_hash(self) -> str:
        digest = hashlib.sha256()
        digest.update("\n".join(self.class_names).encode())
        digest.update(np.ascontiguousarray(self.images).tobytes())
        digest.update(self.labels.tobytes())
        return digest.hexdigest()


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def default_root(dataset: str, root: Path | str | None) -> Path:
    """``root`` if given, else ``$SPACIL_DATA_ROOT/<dataset>``; never a hard-coded path."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(DATA_ROOT_ENV)
    if not env:
        raise DatasetError(f"{dataset}: no data.root given and ${DATA_ROOT_ENV} is not set")
    return Path(env).expanduser() / dataset


def load_cifar100(root: Path, split: str, download: bool) -> ArraySource:
    """CIFAR-100 through torchvision, with a clear message when offline and absent."""
    from torchvision.datasets import CIFAR100

    try:
        ds = CIFAR100(str(root), train=(split == "train"), download=download)
    except RuntimeError as exc:
        raise DatasetError(
            f"cifar100: not found under {root} ({exc}); set data.download=true on a machine with internet, "
            "or place the extracted 'cifar-100-python' folder there"
        ) from None
    return ArraySource(np.asarray(ds.data), np.asarray(ds.targets), list(ds.classes), "cifar100", split)
