"""The nine datasets of the LAMDA / PROOF / ENGINE evaluation protocol: what each one must look like on disk.

Every dataset except CIFAR-100 (read through torchvision) is a folder of the processed release that line
distributes, or one that ``spa-cil data convert`` builds from the official release in the same shape::

    <root>/train/<class folder>/<image files>
    <root>/test/<class folder>/<image files>

**Labels are the protocol's:** the class folders of a split, sorted as ``torchvision.datasets.ImageFolder``
sorts them (``sorted`` of the names), give labels 0..n-1; the seed-1993 class order permutes those labels.
Folder names are matched to the shipped class list (``spacil/data/class_names/<file>.txt``) through
:func:`folder_key`, so the release's own spelling loads as is: CUB's ``001.Black_footed_Albatross``,
ImageNet-R's WordNet ids, spaces or underscores, UCF's ``ApplyEyeMakeup``.

Which classes a protocol uses: the FIRST ``n_classes`` lines of the shipped list. This matches the class
lists LAMDA-CL publishes with their code (``utils/labels.json``): Food-101 drops ``waffles`` (last),
UCF-101 drops ``Yo_Yo`` (last), Cars keeps devkit classes 1..100, ObjectNet keeps the alphabetically first
200 of its 313 classes, SUN keeps the alphabetically first 300 scene categories *after merging
sub-categories* (``apartment_building/outdoor`` -> ``apartment_building``), which is why SUN reads
``sun397_merged.txt`` rather than the 397-line ``sun397.txt``. Their label order is
:func:`protocol_class_names`: the shipped names sorted by the folder names of the processed release.

How to get each dataset: ``docs/datasets.md`` and :mod:`spacil.data.convert` (``spa-cil data convert``).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .datasets import DatasetError, ImageFolderSource, ImageSource, default_root, load_cifar100

logger = logging.getLogger(__name__)

CLASS_NAMES_PACKAGE = "spacil.data.class_names"


@dataclass(frozen=True)
class ProtocolDataset:
    """What one protocol dataset must contain; ``None`` counts are not fixed (or not known) in advance."""

    key: str
    title: str
    n_classes: int  # classes the protocol uses: the first n_classes lines of class_file
    class_file: str  # file in spacil/data/class_names/
    n_listed: int  # lines class_file must have (the full canonical list)
    expected_train: int | None
    expected_test: int | None
    expected_total: int | None = None  # train + test, when only the total is fixed
    image_folder: bool = True  # False: loaded by torchvision (CIFAR-100)
    # How the processed release names its class folders: "name" (the class-list line, spaces or
    # underscores), "underscore" (the class-list line with its spaces replaced by '_', which sorts
    # otherwise: 'Audi_TTS' < 'Audi_TT_' since 'S' < '_'), "numbered" (CUB's 'NNN.Name', NNN = line number)
    # or "wnid" (ImageNet-R's WordNet ids).
    release_folders: str = "name"
    # True where the sorted order of the folders changes with their spelling (spaces vs underscores)
    # and we have not seen the release's spelling: a differing order is then followed with a warning
    # instead of refused.
    spelling_unknown: bool = False


PROTOCOL_DATASETS: dict[str, ProtocolDataset] = {
    spec.key: spec
    for spec in [
        # torchvision CIFAR-100: 500 train / 100 test images per class.
        ProtocolDataset("cifar100", "CIFAR-100", 100, "cifar100.txt", 100, 50_000, 10_000, image_folder=False),
        # CUB-200-2011 train_test_split.txt: 5,994 train / 5,794 test (11,788 images).
        ProtocolDataset("cub200", "CUB-200-2011", 200, "cub200.txt", 200, 5_994, 5_794,
                        release_folders="numbered"),
        # ImageNet-R release: 30,000 images of 200 classes; our per-class 80/20 split (seed 1993) fixes
        # only the total, since per-class counts are not published with the release.
        ProtocolDataset("imagenet_r", "ImageNet-R", 200, "imagenet_r.txt", 200, None, None, expected_total=30_000,
                        release_folders="wnid"),
        # ObjectNet 1.0 has 50,000 images of 313 classes; the count of the 200-class subset is not
        # published, so nothing is checked beyond the classes.
        ProtocolDataset("objectnet", "ObjectNet (200-class subset)", 200, "objectnet.txt", 200, None, None),
        # FGVC-Aircraft 2013b: images_variant_trainval.txt 6,667 / images_variant_test.txt 3,333 (100 variants).
        ProtocolDataset("aircraft", "FGVC-Aircraft (variants)", 100, "aircraft.txt", 100, 6_667, 3_333,
                        spelling_unknown=True),
        # Stanford Cars devkit: 8,144 train / 8,041 test over 196 classes; the per-class counts of the
        # first 100 classes are not something we can vouch for, so they are not checked. The LAMDA label
        # list orders the classes as their underscore-joined folder names sort (Audi_TTS_Coupe_2012 before
        # Audi_TT_Hatchback_2011), so folders are spelt that way and other spellings are refused.
        ProtocolDataset("cars", "Stanford Cars (100 of 196)", 100, "cars.txt", 196, None, None,
                        release_folders="underscore"),
        # Food-101 meta/train.txt, meta/test.txt: exactly 750 / 250 images per class -> 100 classes.
        ProtocolDataset("food101", "Food-101 (100 of 101)", 100, "food101.txt", 101, 75_000, 25_000),
        # UCF-101 split 1 (trainlist01 / testlist01): 9,537 / 3,783 videos for all 101 classes; the counts
        # without YoYo are not known to us, so they are not checked.
        ProtocolDataset("ucf101", "UCF-101 middle frames (100 of 101)", 100, "ucf101.txt", 101, None, None),
        # SUN397 Partitions/Training_01.txt and Testing_01.txt hold 50 images per 397-category each; the
        # first 300 merged scenes cover 325 of the 397 categories -> 325 * 50 = 16,250 per split.
        ProtocolDataset("sun397", "SUN397 (300 merged scenes)", 300, "sun397_merged.txt", 362, 16_250, 16_250),
    ]
}


def protocol_spec(key: str) -> ProtocolDataset:
    """The spec of protocol dataset ``key``."""
    try:
        return PROTOCOL_DATASETS[key]
    except KeyError:
        raise DatasetError(f"unknown protocol dataset {key!r}; known: {', '.join(PROTOCOL_DATASETS)}") from None


def protocol_datasets() -> dict[str, str]:
    """Dataset keys with one line each (for ``spa-cil info`` and ``list_datasets``)."""
    return {k: f"{s.title}: {s.n_classes} classes" + (" (image folder)" if s.image_folder else "")
            for k, s in PROTOCOL_DATASETS.items()}


@lru_cache(maxsize=None)
def _read_class_file(name: str) -> tuple[str, ...]:
    path = resources.files(CLASS_NAMES_PACKAGE) / name
    if not path.is_file():
        raise DatasetError(f"class-name file mismatch: spacil/data/class_names/{name} is not shipped with the package")
    return tuple(line for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def shipped_class_names(key: str) -> list[str]:
    """The full canonical class list of ``key`` (every line of its shipped file), validated."""
    spec = protocol_spec(key)
    names = list(_read_class_file(spec.class_file))
    where = f"spacil/data/class_names/{spec.class_file}"
    if len(names) != spec.n_listed:
        raise DatasetError(f"class-name file mismatch: {where} has {len(names)} names, expected {spec.n_listed}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DatasetError(f"class-name file mismatch: {where} repeats {dup[:5]}")
    bad = [n for n in names if n != n.strip() or "/" in n or n in {".", ".."}]
    if bad:
        raise DatasetError(f"class-name file mismatch: {where} has names that cannot be folder names: {bad[:5]}")
    return names


def folder_key(folder: str) -> str:
    """Folder name -> matching key: a leading ``NNN.`` dropped, then lower-case letters and digits only.

    ``001.Black_footed_Albatross``, ``Black footed Albatross`` and ``black_footed_albatross`` share a key, as
    do ``ApplyEyeMakeup`` and ``Apply_Eye_Makeup`` or ``F-16A_B`` and ``F-16AB``; keys are unique within
    every shipped list (tested).
    """
    return re.sub(r"[^0-9a-z]", "", re.sub(r"^\d+\.", "", folder).lower())


def release_folder_names(key: str) -> list[str]:
    """The folder names of the processed release for the protocol's classes, in shipped-list order."""
    spec = protocol_spec(key)
    names = shipped_class_names(key)[: spec.n_classes]
    if spec.release_folders == "numbered":
        return [f"{i + 1:03d}.{name}" for i, name in enumerate(names)]
    if spec.release_folders == "wnid":
        wnids = [line for line in _read_class_file("imagenet_r_wnids.txt")]
        return wnids[: spec.n_classes]
    if spec.release_folders == "underscore":
        return [name.replace(" ", "_") for name in names]
    return names


def protocol_class_names(key: str) -> list[str]:
    """The classes the protocol uses, in label order: the first ``n_classes`` shipped names, sorted by the
    folder names of the processed release (``ImageFolder``'s rule)."""
    names = shipped_class_names(key)[: protocol_spec(key).n_classes]
    pairs = sorted(zip(release_folder_names(key), names))
    return [name for _, name in pairs]


def _folder_index(key: str) -> dict[str, str]:
    """Matching key -> shipped class name, over the whole shipped list (WordNet ids too, for ImageNet-R)."""
    spec = protocol_spec(key)
    names = shipped_class_names(key)
    index = {folder_key(n): n for n in names}
    if spec.release_folders == "wnid":
        index.update({folder_key(w): n for w, n in zip(_read_class_file("imagenet_r_wnids.txt"), names)})
    return index


def match_folders(key: str, folders: list[str]) -> tuple[list[str | None], list[str]]:
    """Each folder's shipped class name (None where none matches) and the unmatched folders."""
    index = _folder_index(key)
    names = [index.get(folder_key(f)) for f in folders]
    return names, [f for f, n in zip(folders, names) if n is None]


def class_folders(split_dir: Path) -> list[str]:
    """The class folders in ``ImageFolder`` order (hidden folders left out)."""
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def label_order_problem(key: str, folders: list[str], names: list[str]) -> str | None:
    """One line when the sorted folders give another label order than the protocol's, else None."""
    expected = protocol_class_names(key)
    if names == expected:
        return None
    i = next(i for i, (a, b) in enumerate(zip(names, expected)) if a != b)
    want = release_folder_names(key)[shipped_class_names(key).index(expected[i])]
    return (f"{key}: the folders sort into another label order than the processed release: label {i} is folder "
            f"{folders[i]!r} here, {want!r} in the release; name the folders as the release does "
            f"(`spa-cil data convert` writes them so, see docs/datasets.md)")


def layout_problems(key: str, root: Path, split: str) -> list[str]:
    """One line per layout problem of ``root/split`` (class-list file, folder names, class count).

    Empty classes are not checked here (that needs a listing of every folder); :func:`load_protocol_split`
    and :mod:`spacil.data.check` do it.
    """
    spec = protocol_spec(key)
    names = protocol_class_names(key)
    split_dir = root / split
    if not split_dir.is_dir():
        return [f"{key}: no folder {split_dir} (expected {root}/{split}/<class folder>/<images>; see docs/datasets.md)"]
    problems: list[str] = []
    listing = root / "classes.txt"
    if listing.is_file():
        given = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
        full = shipped_class_names(key)
        if given not in (names, full):
            diff = next((i for i, (a, b) in enumerate(zip(given, names)) if a != b), min(len(given), len(names)))
            saw = given[diff] if diff < len(given) else "<end of file>"
            want = names[diff] if diff < len(names) else "<end of list>"
            problems.append(f"{key}: class-name file mismatch: {listing} differs from the label order of "
                            f"spacil/data/class_names/{spec.class_file} at line {diff + 1} ({saw!r} vs {want!r}); "
                            "delete it or fix it")
    folders = class_folders(split_dir)
    matched, unknown = match_folders(key, folders)
    if unknown:
        problems.append(f"{key}: folders {unknown[:5]}{' ...' if len(unknown) > 5 else ''} in {split_dir} are not in "
                        f"the shipped class list spacil/data/class_names/{spec.class_file}")
    used = set(names)
    extra = [f for f, n in zip(folders, matched) if n is not None and n not in used]
    found = {n for n in matched if n in used}
    missing = [n for n in names if n not in found]
    if extra or missing:
        detail = []
        if missing:
            detail.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if extra:
            detail.append(f"outside the protocol's first {spec.n_classes} classes {extra[:5]}"
                          f"{' ...' if len(extra) > 5 else ''}")
        problems.append(f"{key}: wrong class count in {split_dir}: {len(found)} of the {spec.n_classes} protocol "
                        f"classes found, {len(folders)} folders in all ({'; '.join(detail)})")
    elif not unknown and len(set(matched)) == len(matched):
        order = label_order_problem(key, folders, matched)  # type: ignore[arg-type]
        if order and not spec.spelling_unknown:
            problems.append(order)
    return problems


def load_protocol_split(key: str, split: str, root: Path | str | None = None, download: bool = False) -> ImageSource:
    """Load ``split`` of protocol dataset ``key`` with the shipped class list as the label order.

    Raises :class:`DatasetError` with one line naming the first problem: class-name file mismatch,
    unknown folders, wrong class count, empty classes.
    """
    spec = protocol_spec(key)
    if split not in {"train", "test"}:
        raise DatasetError(f"unknown split {split!r}; expected 'train' or 'test'")
    base = default_root(key, root)
    if not spec.image_folder:
        source = load_cifar100(base, split, download)
        if source.class_names != protocol_class_names(key):
            raise DatasetError(f"{key}: class-name file mismatch: torchvision's class list differs from "
                               f"spacil/data/class_names/{spec.class_file}")
        return source
    if not base.is_dir():
        raise DatasetError(f"{key}: dataset folder {base} does not exist (see docs/datasets.md for the layout)")
    problems = layout_problems(key, base, split)
    if problems:
        raise DatasetError(problems[0] + (f" (and {len(problems) - 1} more problems; run the dataset check)"
                                          if len(problems) > 1 else ""))
    folders = class_folders(base / split)
    names, _ = match_folders(key, folders)
    order = label_order_problem(key, folders, names)  # type: ignore[arg-type]
    if order:  # only reached where the release's spelling is unknown: the folders decide, as in ImageFolder
        logger.warning("%s (labels follow the folders found)", order)
    # ImageFolderSource names the empty classes itself, in one line.
    return ImageFolderSource(base, split, dataset=key, class_names=names, folders=folders)  # type: ignore[arg-type]
