"""Every dataset key and how to load it: the protocol datasets and the generic image folder.

It sits above :mod:`.datasets` (image sources) and :mod:`.protocol` (the protocol's class lists and
layouts), so neither of those needs the other's dispatch and no import runs in a circle.
"""

from __future__ import annotations

from pathlib import Path

from ..suggest import did_you_mean
from .datasets import DatasetError, ImageFolderSource, ImageSource, default_root
from .protocol import PROTOCOL_DATASETS, load_protocol_split, protocol_datasets


def load_split(dataset: str, split: str, root: Path | str | None = None, download: bool = False) -> ImageSource:
    """Load one split of a registered dataset."""
    if split not in {"train", "test"}:
        raise DatasetError(f"unknown split {split!r}; expected 'train' or 'test'")
    if dataset in PROTOCOL_DATASETS:
        return load_protocol_split(dataset, split, root, download)
    if dataset in IMAGE_FOLDER_DATASETS:
        base = default_root(dataset, root)
        if not base.is_dir():
            raise DatasetError(f"{dataset}: dataset folder {base} does not exist")
        return ImageFolderSource(base, split, dataset=dataset)
    raise DatasetError(f"unknown dataset {dataset!r}{did_you_mean(dataset, list_datasets())} in data.dataset; "
                       f"known: {', '.join(sorted(list_datasets()))}")


#: Datasets read from a generic image-folder layout.
IMAGE_FOLDER_DATASETS = {"image_folder": "generic root/{train,test}/<class>/<images> folder"}


def list_datasets() -> dict[str, str]:
    """Dataset keys and a one-line description each."""
    return {**protocol_datasets(), **IMAGE_FOLDER_DATASETS}
