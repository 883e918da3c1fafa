"""Processed releases of the LAMDA line load as distributed, in the published label order.

Each test builds a folder shaped like the release (``train/`` and ``test/``, one small generated image per
class and split, the release's own folder names) and checks our loader against an independent oracle:
``torchvision.datasets.ImageFolder`` on the same folder gives label i = i-th sorted folder name, and
``RandomState(1993).permutation(n)`` (the same stream as ``np.random.seed(1993); np.random.permutation(n)``)
orders those labels. The first classes of that order are also pinned by name, written out here.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import ImageFolder

from spacil.data.catalog import load_split
from spacil.data.check import check_dataset
from spacil.data.scenario import build_scenario, shipped_class_order

CLASS_NAMES = Path(__file__).resolve().parents[1] / "src" / "spacil" / "data" / "class_names"


def lines(name: str) -> list[str]:
    return [line for line in (CLASS_NAMES / name).read_text(encoding="utf-8").splitlines() if line.strip()]


# dataset -> (class file, classes used, {release folder name: our class name}) built from the shipped files
# by the release's own naming: CUB keeps 'NNN.' prefixes, ImageNet-R WordNet ids, Cars underscores for spaces,
# the rest class names.
def release_folders(key: str) -> dict[str, str]:
    if key == "cub200":
        return {f"{i + 1:03d}.{n}": n for i, n in enumerate(lines("cub200.txt"))}
    if key == "imagenet_r":
        return dict(zip(lines("imagenet_r_wnids.txt"), lines("imagenet_r.txt")))
    if key == "cars":
        return {n.replace(" ", "_"): n for n in lines("cars.txt")[:100]}
    file, used = {"objectnet": ("objectnet.txt", 200), "aircraft": ("aircraft.txt", 100),
                  "cars": ("cars.txt", 100), "food101": ("food101.txt", 100), "ucf101": ("ucf101.txt", 100),
                  "sun397": ("sun397_merged.txt", 300)}[key]
    return {n: n for n in lines(file)[:used]}


# The first five classes of the seed-1993 order, by name (from the sorted release folder names).
FIRST_CLASSES = {
    "cifar100": ["road", "palm_tree", "snake", "bicycle", "cloud"],
    "cub200": ["Magnolia_Warbler", "Cliff_Swallow", "Pied_billed_Grebe", "Red_winged_Blackbird",
               "Louisiana_Waterthrush"],
    "imagenet_r": ["submarine", "fire engine", "golden retriever", "vulture", "broccoli"],
    "objectnet": ["notebook", "leaf", "chair", "bathrobe", "pencil"],
    "aircraft": ["ERJ 135", "DC-9-30", "Fokker 70", "737-800", "A318"],
    "cars": ["Chevrolet Silverado 1500 Hybrid Crew Cab 2012", "Chevrolet Corvette Convertible 2012",
             "Chrysler PT Cruiser Convertible 2008", "Aston Martin V8 Vantage Coupe 2012", "Audi TT RS Coupe 2012"],
    "food101": ["onion_rings", "huevos_rancheros", "poutine", "bread_pudding", "churros"],
    "ucf101": ["Pommel_Horse", "Parallel_Bars", "Shotput", "Basketball_Dunk", "Cricket_Shot"],
    "sun397": ["home_office", "motel", "forest", "skatepark", "closet"],
}
FOLDER_KEYS = [k for k in FIRST_CLASSES if k != "cifar100"]


def write_release(root: Path, folders: list[str], per_split: dict[str, int]) -> None:
    rng = np.random.default_rng(0)
    for split, n in per_split.items():
        for c, folder in enumerate(folders):
            for j in range(n):
                path = root / split / folder / f"img_{c}_{j}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)).save(path)


def seed_1993_first(names_in_label_order: list[str], k: int = 10) -> list[str]:
    perm = np.random.RandomState(1993).permutation(len(names_in_label_order))
    return [names_in_label_order[i] for i in perm[:k]]


def first_classes_of_the_run(source) -> list[str]:
    scenario = build_scenario(source.class_names, shipped_class_order(source.dataset), 10, 10)
    return list(scenario.class_names[:10])


@pytest.mark.parametrize("key", FOLDER_KEYS)
def test_release_loads_without_conversion_in_the_published_label_order(key, tmp_path):
    mapping = release_folders(key)
    root = tmp_path / key
    write_release(root, list(mapping), {"train": 2, "test": 1})
    oracle = ImageFolder(str(root / "train"))
    oracle_names = [mapping[c] for c in oracle.classes]  # label i = i-th sorted folder name
    train = load_split(key, "train", root)
    assert train.class_names == oracle_names
    ours = [(Path(train.sample_id(i)).parent.name, int(train.labels[i])) for i in range(len(train))]
    theirs = sorted((Path(p).parent.name, y) for p, y in oracle.samples)
    assert sorted(ours) == theirs  # every image has ImageFolder's label
    assert first_classes_of_the_run(train) == seed_1993_first(oracle_names)
    assert seed_1993_first(oracle_names, 5) == FIRST_CLASSES[key]
    assert load_split(key, "test", root).class_names == oracle_names
    text = check_dataset(key, root, verify_images=False).render()
    n = len(mapping)
    assert f"train: {2 * n} images in {n} classes" in text and f"test:  {n} images in {n} classes" in text
    assert len(text.splitlines()) <= 25 and "Traceback" not in text


def test_ucf_release_in_camel_case_gives_the_same_labels(tmp_path):
    """UCF-101's own spelling (ApplyEyeMakeup) sorts like the underscored one: HammerThrow before Hammering."""
    camel = {n.replace("_", ""): n for n in lines("ucf101.txt")[:100]}
    write_release(tmp_path / "u", list(camel), {"train": 1, "test": 1})
    oracle = ImageFolder(str(tmp_path / "u" / "train"))
    source = load_split("ucf101", "train", tmp_path / "u")
    assert source.class_names == [camel[c] for c in oracle.classes]
    assert source.class_names[34:36] == ["Hammer_Throw", "Hammering"]


def test_cub_folders_without_their_numbers_are_refused(tmp_path):
    """Bare names would sort alphabetically: other labels than the release, so the loader stops."""
    write_release(tmp_path / "c", lines("cub200.txt"), {"train": 1, "test": 1})
    with pytest.raises(ValueError, match=r"another label order.*'001.Black_footed_Albatross'"):
        load_split("cub200", "train", tmp_path / "c")


def test_check_prints_published_counts_and_split_fidelity(tmp_path):
    mapping = release_folders("imagenet_r")
    write_release(tmp_path / "r", list(mapping), {"train": 1, "test": 1})
    report = check_dataset("imagenet_r", tmp_path / "r", verify_images=False)
    text = report.render()
    assert "train: 200 images in 200 classes (expected 24000)" in text
    assert "counts expected from: the processed ImageNet-R" in text
    assert "train: 200 images, expected 24000" in "\n".join(report.problems)
    (tmp_path / "r" / "conversion.json").write_text("{}")
    text = check_dataset("imagenet_r", tmp_path / "r", verify_images=False).render()
    assert "NOT the processed release's split" in text
    write_release(tmp_path / "a", list(release_folders("aircraft")), {"train": 1, "test": 1})
    text = check_dataset("aircraft", tmp_path / "a", verify_images=False).render()
    assert "(no published count)" in text and "folder spelling is not known" in text


def test_cifar100_loads_through_torchvision_in_its_label_order(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    names = lines("cifar100.txt")
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for split, n in (("train", 200), ("test", 100)):
        data = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": [i % 100 for i in range(n)]}
        (folder / split).write_bytes(pickle.dumps(data))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": names}))
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # the md5 of the real files only
    source = load_split("cifar100", "train", tmp_path)
    assert source.class_names == names == sorted(names)
    assert first_classes_of_the_run(source) == seed_1993_first(names)
    assert seed_1993_first(names, 5) == FIRST_CLASSES["cifar100"]
    assert shipped_class_order("cifar100")[:5] == [68, 56, 78, 8, 23]
    text = check_dataset("cifar100", tmp_path).render()
    assert "train: 200 images in 100 classes (expected 50000)" in text and "from: torchvision CIFAR-100" in text
    assert "test:  100 images in 100 classes (expected 10000)" in text


def test_folder_keys_are_unique_in_every_shipped_list():
    from spacil.data.protocol import PROTOCOL_DATASETS, folder_key, shipped_class_names

    for key in PROTOCOL_DATASETS:
        names = shipped_class_names(key)
        assert len({folder_key(n) for n in names}) == len(names), key
    assert folder_key("001.Black_footed_Albatross") == folder_key("Black footed Albatross")
    assert re.fullmatch(r"[0-9a-z]+", folder_key("F-16A_B"))
