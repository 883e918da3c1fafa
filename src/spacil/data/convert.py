"""Convert an official dataset release into the protocol layout that spacil reads (docs/datasets.md).

    spa-cil data convert cub200     SRC DST   # CUB_200_2011/ (images.txt, train_test_split.txt, ...)
    spa-cil data convert food101    SRC DST   # food-101/ (meta/, images/)
    spa-cil data convert imagenet_r SRC DST   # imagenet-r/ (one folder per WordNet id)
    spa-cil data convert objectnet  SRC DST   # objectnet-1.0/ (images/<class>/)
    spa-cil data convert aircraft   SRC DST   # fgvc-aircraft-2013b/ (data/images_variant_*.txt)
    spa-cil data convert sun397     SRC DST   # folder holding SUN397/ and Partitions/
    spa-cil data convert cars       SRC DST   # folder holding cars_train/, cars_test/, devkit/

DST receives ``train/<class folder>/<image>``, ``test/<class folder>/<image>`` with the class folders named as
the processed release of the LAMDA line names them (CUB ``001.Black_footed_Albatross``, ImageNet-R WordNet
ids, the class-list line otherwise: :func:`spacil.data.protocol.release_folder_names`), so sorting them gives
the release's labels; plus ``classes.txt`` (the protocol's classes in label order) and ``conversion.json``
(rule, seed, counts). Images are hard-linked when SRC and DST share a
file system (no extra disk), copied otherwise (``--link copy`` forces copies, ``--link symlink`` links).
Only the protocol's classes are written. UCF-101 needs a video decoder: see docs/datasets.md.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import SpacilError
from .datasets import IMAGE_EXTENSIONS
from .protocol import protocol_class_names, protocol_spec, release_folder_names, shipped_class_names


class ConversionError(SpacilError, RuntimeError):
    """The release does not look like the one the converter expects; the message says what is off."""


Item = tuple[str, str, Path, str]  # (split, class folder, source file, output file name)


# ------------------------------------------------------------------------------------------------ helpers
def folder_name(official: str) -> str:
    """Official class name -> folder name: the only change is '/' -> '_' (folder names cannot hold '/')."""
    return official.strip().replace("/", "_")


def read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise ConversionError(f"expected file {path} is missing (is SRC the right folder?)")
    return [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]


def shipped_list(name: str) -> list[str]:
    """A raw shipped list (files that are not a dataset's class list, e.g. the ImageNet-R WordNet ids)."""
    path = resources.files("spacil.data.class_names") / name
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def image_files(folder: Path) -> list[str]:
    return sorted(f.name for f in folder.iterdir() if f.is_file() and f.name.lower().endswith(IMAGE_EXTENSIONS))


def place(src: Path, dst: Path, mode: str) -> str:
    """Hard-link (falling back to a copy across file systems), copy or symlink ``src`` to ``dst``."""
    if mode == "symlink":
        os.symlink(src.resolve(), dst)
        return "symlink"
    if mode == "hardlink":
        try:
            os.link(src, dst)
            return "hardlink"
        except OSError:
            pass
    shutil.copy2(src, dst)
    return "copy"


def split_per_class(files: dict[str, list[Path]], classes: list[str], test_fraction: float,
                    seed: int) -> list[Item]:
    """Random per-class train/test split: one ``default_rng(seed)``, classes in label order.

    Class ``c`` with ``n`` images (sorted by file name) gets ``n_test = floor(n * test_fraction + 0.5)``
    test images (at least 1, at most n - 1), the first ``n_test`` of ``rng.permutation(n)``.
    """
    if not 0 < test_fraction < 1:
        raise ConversionError(f"test fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    items: list[Item] = []
    for name in classes:
        paths = sorted(files[name], key=lambda p: p.name)
        n = len(paths)
        if n < 2:
            raise ConversionError(f"class {name!r} has {n} images; a train/test split needs at least 2")
        n_test = min(max(1, int(np.floor(n * test_fraction + 0.5))), n - 1)
        test = set(rng.permutation(n)[:n_test].tolist())
        items.extend(("test" if i in test else "train", name, p, p.name) for i, p in enumerate(paths))
    return items


def write_layout(key: str, items: list[Item], dst: Path, mode: str, info: dict) -> dict:
    """Write ``items`` under a temporary folder next to ``dst`` and rename it into place when complete."""
    classes = protocol_class_names(key)
    wanted = set(classes)
    stray = sorted({c for _, c, _, _ in items} - wanted)
    if stray:
        raise ConversionError(f"converter bug: classes {stray[:5]} are not protocol classes of {key}")
    for split in ("train", "test"):
        have = {c for s, c, _, _ in items if s == split}
        missing = [c for c in classes if c not in have]
        if missing:
            raise ConversionError(f"{key}: the release has no {split} images for {len(missing)} protocol classes, "
                                  f"e.g. {missing[:5]}")
    if dst.exists() and any(dst.iterdir()):
        raise ConversionError(f"{dst} exists and is not empty; choose a new folder or delete it first")
    spec = protocol_spec(key)
    folder_of = dict(zip(shipped_class_names(key)[: spec.n_classes], release_folder_names(key)))
    tmp = dst.with_name(f".{dst.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    counts: dict[str, int] = defaultdict(int)
    modes: dict[str, int] = defaultdict(int)
    taken: set[tuple[str, str, str]] = set()
    try:
        for split, name, src, out in items:
            slot = (split, name, out)
            if slot in taken:
                raise ConversionError(f"two images would both be written to {split}/{folder_of[name]}/{out}")
            taken.add(slot)
            folder = tmp / split / folder_of[name]
            folder.mkdir(parents=True, exist_ok=True)
            if not src.is_file():
                raise ConversionError(f"image listed by the release is missing: {src}")
            modes[place(src, folder / out, mode)] += 1
            counts[split] += 1
        (tmp / "classes.txt").write_text("\n".join(classes) + "\n", encoding="utf-8")
        summary = {"dataset": key, **info, "n_classes": len(classes), "counts": dict(counts), "files": dict(modes)}
        (tmp / "conversion.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        if dst.exists():
            dst.rmdir()
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _check_names(key: str, official: list[str], what: str) -> None:
    """The release's class list (as folder names) must equal our shipped canonical list."""
    shipped = shipped_class_names(key)
    got = [folder_name(n) for n in official]
    if got != shipped:
        diff = next((i for i, (a, b) in enumerate(zip(got, shipped)) if a != b), min(len(got), len(shipped)))
        raise ConversionError(f"{key}: {what} does not match spacil/data/class_names/{protocol_spec(key).class_file} "
                              f"({len(got)} vs {len(shipped)} names; first difference at line {diff + 1})")


# --------------------------------------------------------------------------------------------- converters
def convert_cub200(src: Path) -> tuple[list[Item], dict]:
    """CUB-200-2011: images.txt + image_class_labels.txt + train_test_split.txt (1 = train, 0 = test)."""
    raw_classes = [line.split(" ", 1)[1] for line in read_lines(src / "classes.txt")]
    # '001.Black_footed_Albatross' -> 'Black_footed_Albatross'
    _check_names("cub200", [c.split(".", 1)[1] for c in raw_classes], "classes.txt")
    names = shipped_class_names("cub200")
    images = dict(line.split(" ", 1) for line in read_lines(src / "images.txt"))
    labels = dict(line.split() for line in read_lines(src / "image_class_labels.txt"))
    is_train = dict(line.split() for line in read_lines(src / "train_test_split.txt"))
    if not images.keys() == labels.keys() == is_train.keys():
        raise ConversionError("cub200: images.txt, image_class_labels.txt and train_test_split.txt list different ids")
    used = set(protocol_class_names("cub200"))
    items: list[Item] = []
    for image_id in sorted(images, key=int):
        name = names[int(labels[image_id]) - 1]
        if name in used:
            rel = images[image_id]
            items.append(("train" if is_train[image_id] == "1" else "test", name, src / "images" / rel,
                          Path(rel).name))
    return items, {"rule": "official train_test_split.txt"}


def convert_food101(src: Path) -> tuple[list[Item], dict]:
    """Food-101: meta/train.txt and meta/test.txt list 'class/image_id' (no extension)."""
    _check_names("food101", read_lines(src / "meta" / "classes.txt"), "meta/classes.txt")
    used = set(protocol_class_names("food101"))
    items: list[Item] = []
    for split in ("train", "test"):
        for entry in read_lines(src / "meta" / f"{split}.txt"):
            name, _, image_id = entry.partition("/")
            if name in used:
                items.append((split, name, src / "images" / name / f"{image_id}.jpg", f"{image_id}.jpg"))
    return items, {"rule": "official meta/train.txt and meta/test.txt"}


def convert_imagenet_r(src: Path, seed: int, test_fraction: float) -> tuple[list[Item], dict]:
    """ImageNet-R: one folder per WordNet id; renamed to our class names, split 80/20 per class."""
    wnids = shipped_list("imagenet_r_wnids.txt")  # line i = WordNet id of imagenet_r.txt line i
    names = shipped_class_names("imagenet_r")
    if len(wnids) != len(names):
        raise ConversionError("imagenet_r: imagenet_r_wnids.txt and imagenet_r.txt have different lengths")
    folders = {p.name for p in src.iterdir() if p.is_dir()}
    unknown = sorted(folders - set(wnids))
    if unknown:
        raise ConversionError(f"imagenet_r: folders {unknown[:5]} in {src} are not ImageNet-R WordNet ids")
    used = protocol_class_names("imagenet_r")
    files = {name: [src / wnid / f for f in image_files(src / wnid)] if (src / wnid).is_dir() else []
             for wnid, name in zip(wnids, names) if name in used}
    return split_per_class(files, used, test_fraction, seed), {
        "rule": f"random per-class split, numpy default_rng({seed}), test fraction {test_fraction}",
        "seed": seed, "test_fraction": test_fraction}


def convert_objectnet(src: Path, seed: int, test_fraction: float) -> tuple[list[Item], dict]:
    """ObjectNet 1.0: images/<class folder>/; the first 200 folders (alphabetical), split 80/20 per class."""
    base = src / "images" if (src / "images").is_dir() else src
    used = protocol_class_names("objectnet")
    folders = {p.name for p in base.iterdir() if p.is_dir()}
    missing = [c for c in used if c not in folders]
    if missing:
        raise ConversionError(f"objectnet: {base} lacks class folders {missing[:5]} (expected objectnet-1.0/images)")
    files = {name: [base / name / f for f in image_files(base / name)] for name in used}
    return split_per_class(files, used, test_fraction, seed), {
        "rule": f"first 200 classes; random per-class split, numpy default_rng({seed}), test fraction {test_fraction}",
        "seed": seed, "test_fraction": test_fraction}


def convert_aircraft(src: Path) -> tuple[list[Item], dict]:
    """FGVC-Aircraft 2013b: train = data/images_variant_trainval.txt, test = images_variant_test.txt."""
    data = src / "data" if (src / "data").is_dir() else src
    _check_names("aircraft", read_lines(data / "variants.txt"), "data/variants.txt")
    items: list[Item] = []
    for split, listing in (("train", "trainval"), ("test", "test")):
        for line in read_lines(data / f"images_variant_{listing}.txt"):
            image_id, _, variant = line.partition(" ")
            items.append((split, folder_name(variant), data / "images" / f"{image_id}.jpg", f"{image_id}.jpg"))
    return items, {"rule": "official images_variant_trainval.txt (train) / images_variant_test.txt (test)"}


def convert_sun397(src: Path, partition: int) -> tuple[list[Item], dict]:
    """SUN397: Partitions/Training_NN.txt / Testing_NN.txt; sub-categories merged into their scene."""
    images = src / "SUN397" if (src / "SUN397").is_dir() else src
    parts = src / "Partitions" if (src / "Partitions").is_dir() else src
    official = read_lines(images / "ClassName.txt") if (images / "ClassName.txt").is_file() else None
    if official is not None:  # '/a/apartment_building/outdoor' -> 'apartment_building_outdoor'
        _check_sun(official)
    used = set(protocol_class_names("sun397"))
    items: list[Item] = []
    for split, stem in (("train", "Training"), ("test", "Testing")):
        for line in read_lines(parts / f"{stem}_{partition:02d}.txt"):
            pieces = line.strip("/").split("/")  # ['a', 'apartment_building', 'outdoor', 'sun_x.jpg']
            if len(pieces) < 3:
                raise ConversionError(f"sun397: unexpected partition line {line!r}")
            scene = pieces[1]
            if scene in used:
                items.append((split, scene, images.joinpath(*pieces), pieces[-1]))
    return items, {"rule": f"official Partitions/Training_{partition:02d}.txt and Testing_{partition:02d}.txt; "
                           "sub-categories merged into their scene (first path component)", "partition": partition}


def _check_sun(official: list[str]) -> None:
    as_folders = ["_".join(p.strip("/").split("/")[1:]) for p in official]
    if as_folders != shipped_list("sun397.txt"):
        raise ConversionError("sun397: SUN397/ClassName.txt does not match spacil/data/class_names/sun397.txt")


def convert_cars(src: Path) -> tuple[list[Item], dict]:
    """Stanford Cars: devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ConversionError("cars: reading the devkit's .mat files needs scipy (pip install scipy)") from None
    devkit = src / "devkit"
    meta = loadmat(devkit / "cars_meta.mat", squeeze_me=True)
    _check_names("cars", [str(n) for n in np.atleast_1d(meta["class_names"])], "devkit/cars_meta.mat")
    names = shipped_class_names("cars")
    used = set(protocol_class_names("cars"))
    test_annos = next((p for p in (src / "cars_test_annos_withlabels.mat", devkit / "cars_test_annos_withlabels.mat")
                       if p.is_file()), None)
    if test_annos is None:
        raise ConversionError("cars: cars_test_annos_withlabels.mat not found in SRC or SRC/devkit")
    items: list[Item] = []
    for split, annos, folder in (("train", devkit / "cars_train_annos.mat", src / "cars_train"),
                                 ("test", test_annos, src / "cars_test")):
        records = np.atleast_1d(loadmat(annos, squeeze_me=True)["annotations"])
        for rec in records:
            name = names[int(rec["class"]) - 1]
            if name in used:
                fname = str(rec["fname"])
                items.append((split, name, folder / fname, fname))
    return items, {"rule": "official devkit train / test annotations (class ids 1..100)"}


# ------------------------------------------------------------------------------------------------ entry point
def convert(key: str, src: Path, dst: Path, link: str = "hardlink", seed: int = 1993, test_fraction: float = 0.2,
            partition: int = 1) -> dict:
    """Convert release ``src`` of dataset ``key`` into ``dst``; returns the conversion summary."""
    src = Path(src).expanduser()
    if not src.is_dir():
        raise ConversionError(f"source folder {src} does not exist")
    if key == "cub200":
        items, info = convert_cub200(src)
    elif key == "food101":
        items, info = convert_food101(src)
    elif key == "imagenet_r":
        items, info = convert_imagenet_r(src, seed, test_fraction)
    elif key == "objectnet":
        items, info = convert_objectnet(src, seed, test_fraction)
    elif key == "aircraft":
        items, info = convert_aircraft(src)
    elif key == "sun397":
        items, info = convert_sun397(src, partition)
    elif key == "cars":
        items, info = convert_cars(src)
    else:
        raise ConversionError(f"no converter for {key!r} (see docs/datasets.md for manual steps)")
    return write_layout(key, items, Path(dst).expanduser(), link, {"source": str(src), **info})


CONVERTERS = ("cub200", "food101", "imagenet_r", "objectnet", "aircraft", "sun397", "cars")
