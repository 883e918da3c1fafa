"""Protocol datasets: shipped class lists, the folder layout and its errors, the checker, the converters."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from spacil.cli import app
from spacil.data import convert as convert_dataset
from spacil.data import protocol
from spacil.data.check import check_dataset
from spacil.data.datasets import BadImageError, DatasetError, ImageFolderSource
from spacil.data.protocol import PROTOCOL_DATASETS, load_protocol_split, protocol_class_names, shipped_class_names
from spacil.data.scenario import shipped_class_order

ROOT = Path(__file__).resolve().parents[1]
IMAGE_FOLDER_KEYS = [k for k, s in PROTOCOL_DATASETS.items() if s.image_folder]




def save_image(path: Path, seed: int, size: int = 8, fmt: str | None = None, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path, format=fmt)
    return path


def make_layout(root: Path, names: list[str], n_train: int = 2, n_test: int = 1) -> Path:
    for split, n in (("train", n_train), ("test", n_test)):
        for c, name in enumerate(names):
            for i in range(n):
                save_image(root / split / name / f"img_{i}.png", seed=1000 * c + 10 * i + (split == "test"))
    return root


def shrink(monkeypatch, key: str, n: int, **counts) -> None:
    """Make ``key`` a protocol of its first ``n`` classes (image counts as given, else unchecked)."""
    spec = dataclasses.replace(PROTOCOL_DATASETS[key], n_classes=n, expected_train=counts.get("train"),
                               expected_test=counts.get("test"), expected_total=counts.get("total"))
    monkeypatch.setitem(PROTOCOL_DATASETS, key, spec)


# ----------------------------------------------------------------------------------- shipped class lists
def test_every_class_list_loads_and_matches_the_shipped_class_order():
    for key, spec in PROTOCOL_DATASETS.items():
        names = protocol_class_names(key)
        assert len(names) == spec.n_classes
        assert len(shipped_class_order(key)) == spec.n_classes, key  # the seed-1993 order permutes these labels
        assert all(n == n.strip() and "/" not in n for n in shipped_class_names(key))


def test_class_lists_follow_their_official_order():
    food = shipped_class_names("food101")
    assert food == sorted(food) and food[0] == "apple_pie" and food[-1] == "waffles"
    assert "waffles" not in protocol_class_names("food101")
    objectnet = shipped_class_names("objectnet")
    assert objectnet == sorted(objectnet) and objectnet[-1] == "plunger"
    aircraft = shipped_class_names("aircraft")
    assert aircraft[:3] == ["707-320", "727-200", "737-200"] and aircraft[-1] == "Yak-42"
    assert {"F-16A_B", "F_A-18"} <= set(aircraft)
    cars = shipped_class_names("cars")
    assert cars[0] == "AM General Hummer SUV 2000" and cars[-1] == "smart fortwo Convertible 2012"
    assert protocol_class_names("cars")[-1] == "FIAT 500 Convertible 2012"
    ucf = shipped_class_names("ucf101")
    camel = [name.replace("_", "") for name in ucf]  # classInd.txt names
    # sorted folder names (ImageFolder), not classInd.txt, which has Hammering before HammerThrow
    assert ucf == sorted(ucf) and camel == sorted(camel)
    assert camel[34:36] == ["HammerThrow", "Hammering"] and camel[46:48] == ["JumpRope", "JumpingJack"]
    assert camel[-1] == "YoYo"
    assert all(re.fullmatch(r"[A-Z][a-z]+(_[A-Z][a-z]*)*", n) for n in ucf)


def test_sun_merged_scenes_are_consistent_with_the_397_categories():
    categories = convert_dataset.shipped_list("sun397.txt")
    merged = shipped_class_names("sun397")
    assert len(categories) == 397 and len(merged) == 362 and merged == sorted(merged)
    parent = {}
    for cat in categories:  # each category is a merged scene or '<scene>_<sub-category>'
        owners = [m for m in merged if cat == m or cat.startswith(m + "_")]
        assert owners, cat
        parent[cat] = max(owners, key=len)
    assert sorted(set(parent.values()), key=merged.index) == merged
    used = set(protocol_class_names("sun397"))
    assert protocol_class_names("sun397")[-1] == "ski_slope"
    # 50 train + 50 test images per category in every official partition
    assert 50 * sum(parent[c] in used for c in categories) == PROTOCOL_DATASETS["sun397"].expected_train


# ------------------------------------------------------------------------------------------- the layout
@pytest.mark.parametrize("key", IMAGE_FOLDER_KEYS)
def test_miniature_layout_loads_with_shipped_label_order(key, tmp_path, monkeypatch):
    names = shipped_class_names(key)[:3]
    root = make_layout(tmp_path / key, names)
    with pytest.raises(DatasetError, match="wrong class count.*3 of the"):
        load_protocol_split(key, "train", root)
    shrink(monkeypatch, key, 3)
    source = load_protocol_split(key, "train", root)
    assert source.dataset == key and source.class_names == names
    assert source.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert source.sample_id(2) == f"train/{names[1]}/img_0.png"
    assert len(load_protocol_split(key, "test", root)) == 3


def test_unknown_folder_is_named(tmp_path, monkeypatch):
    shrink(monkeypatch, "food101", 3)
    root = make_layout(tmp_path / "f", protocol_class_names("food101") + ["pizza_margherita"])
    with pytest.raises(DatasetError, match=r"\['pizza_margherita'\].*not in the shipped class list"):
        load_protocol_split("food101", "train", root)


def test_folder_outside_the_subset_is_a_class_count_error(tmp_path, monkeypatch):
    shrink(monkeypatch, "food101", 3)
    root = make_layout(tmp_path / "f", shipped_class_names("food101")[:4])
    with pytest.raises(DatasetError, match=r"wrong class count.*outside the protocol's first 3 classes \['beef_carpaccio'\]"):
        load_protocol_split("food101", "train", root)


def test_empty_class_is_named(tmp_path, monkeypatch):
    shrink(monkeypatch, "cub200", 3)
    names = protocol_class_names("cub200")
    root = make_layout(tmp_path / "c", names)
    for f in (root / "test" / names[1]).iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match=rf"no images.*{names[1]}"):
        load_protocol_split("cub200", "test", root)


def test_class_name_file_mismatches(tmp_path, monkeypatch):
    shrink(monkeypatch, "aircraft", 3)
    root = make_layout(tmp_path / "a", protocol_class_names("aircraft"))
    (root / "classes.txt").write_text("707-320\n737-200\n727-200\n")  # two lines swapped
    with pytest.raises(DatasetError, match=r"class-name file mismatch.*line 2 \('737-200' vs '727-200'\)"):
        load_protocol_split("aircraft", "train", root)
    (root / "classes.txt").write_text("707-320\n727-200\n737-200\n")
    assert len(load_protocol_split("aircraft", "train", root)) == 6
    monkeypatch.setitem(PROTOCOL_DATASETS, "aircraft",
                        dataclasses.replace(PROTOCOL_DATASETS["aircraft"], n_listed=101))
    with pytest.raises(DatasetError, match="class-name file mismatch.*has 100 names, expected 101"):
        load_protocol_split("aircraft", "train", root)


def test_missing_split_and_unknown_key(tmp_path):
    (tmp_path / "x" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no folder .*test"):
        load_protocol_split("cars", "test", tmp_path / "x")
    with pytest.raises(DatasetError, match="unknown protocol dataset"):
        load_protocol_split("imagenet_a", "train", tmp_path)


# -------------------------------------------------------------------------------------------- the check
def test_check_reports_ok_for_a_valid_folder(tmp_path, monkeypatch):
    shrink(monkeypatch, "ucf101", 3, train=6, test=3)
    root = make_layout(tmp_path / "u", protocol_class_names("ucf101"))
    report = check_dataset("ucf101", root, workers=2)
    text = report.render()
    assert report.ok, text
    assert "train: 6 images in 3 classes (no published count), 2-2 per class" in text  # a release: none published
    (root / "conversion.json").write_text("{}")  # what `spa-cil data convert` leaves: its rule's counts apply
    text = check_dataset("ucf101", root, workers=2).render()
    assert text.splitlines()[0].endswith(": OK")
    assert "train: 6 images in 3 classes (expected 6), 2-2 per class" in text
    assert "counts expected from: the conversion rule in docs/datasets.md" in text
    assert "images decoded: 9, unreadable: 0" in text


def test_check_names_truncated_images_and_counts_converted_modes(tmp_path, monkeypatch):
    shrink(monkeypatch, "objectnet", 3)
    names = protocol_class_names("objectnet")
    root = make_layout(tmp_path / "o", names)
    folder = root / "train" / names[0]
    good = save_image(folder / "whole.jpg", seed=5, size=64, fmt="JPEG")
    (folder / "truncated.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    save_image(folder / "gray.png", seed=6, mode="L")
    save_image(folder / "cmyk.jpg", seed=7, fmt="JPEG", mode="CMYK")
    # independent judge: the loader itself refuses the truncated file and accepts the others
    source = ImageFolderSource(root, "train", class_names=names)
    bad = [source.sample_id(i) for i in range(len(source)) if _fails(source, i)]
    assert bad == [f"train/{names[0]}/truncated.jpg"]

    report = check_dataset("objectnet", root, workers=2)
    assert [rel for rel, _ in report.unreadable] == [f"train/{names[0]}/truncated.jpg"]
    assert report.splits["train"].modes == {"L": 1, "CMYK": 1}
    assert len(report.problems) == 1 and "1 unreadable" in report.problems[0]
    text = report.render()
    assert ": 1 PROBLEM" in text.splitlines()[0]
    assert f"train/{names[0]}/truncated.jpg" in text
    assert "1 grayscale" in text and "1 CMYK" in text


def _fails(source, i) -> bool:
    try:
        source.load(i)
    except BadImageError:
        return True
    return False


def test_check_collects_every_kind_of_problem_on_one_screen(tmp_path, monkeypatch):
    shrink(monkeypatch, "cars", 3, train=7, test=3)
    names = protocol_class_names("cars")
    root = make_layout(tmp_path / "c", names + ["Not A Car 1999"])
    for f in (root / "train" / names[2]).iterdir():
        f.unlink()
    for i in range(30):
        (root / "train" / names[0] / f"broken_{i:02d}.jpg").write_bytes(b"no image here")
    (root / "test" / names[0] / "notes.txt").write_text("not an image")
    (root / "conversion.json").write_text("{}")
    report = check_dataset("cars", root, workers=2)
    assert not report.ok
    joined = "\n".join(report.problems)
    assert "not in the shipped class list" in joined
    assert "train: 1 empty classes: Acura TL Sedan 2012" in joined
    assert "train: 34 images, expected 7" in joined  # 2 + 30 broken, 2, 0
    assert "30 unreadable images" in joined
    assert len(report.unreadable) == 30
    text = report.render()
    assert len(text.splitlines()) <= 25
    assert "broken_00.jpg" in text and "... and 25 more" in text


def test_check_of_a_missing_folder(tmp_path):
    report = check_dataset("cub200", tmp_path / "nothing")
    assert not report.ok and "does not exist" in report.render()


# ------------------------------------------------------------------------------------------- converters
def _fake_cub(src: Path, n_images: list[int], train_flags: list[list[int]]) -> None:
    names = shipped_class_names("cub200")
    (src / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (src / "classes.txt").write_text("".join(f"{i + 1} {i + 1:03d}.{n}\n" for i, n in enumerate(names)))
    lines, labels, split = [], [], []
    image_id = 0
    for c, (count, flags) in enumerate(zip(n_images, train_flags)):
        for j in range(count):
            image_id += 1
            rel = f"{c + 1:03d}.{names[c]}/{names[c]}_{j:04d}.jpg"
            save_image(src / "images" / rel, seed=image_id, fmt="JPEG")
            lines.append(f"{image_id} {rel}\n")
            labels.append(f"{image_id} {c + 1}\n")
            split.append(f"{image_id} {flags[j]}\n")
    (src / "images.txt").write_text("".join(lines))
    (src / "image_class_labels.txt").write_text("".join(labels))
    (src / "train_test_split.txt").write_text("".join(split))


def test_convert_cub200(tmp_path, monkeypatch):
    shrink(monkeypatch, "cub200", 3)
    # class 4 exists in the release but is outside the (shrunk) protocol
    _fake_cub(tmp_path / "CUB_200_2011", [3, 2, 4, 2], [[1, 0, 1], [1, 0], [0, 1, 1, 0], [1, 0]])
    dst = tmp_path / "cub200"
    summary = convert_dataset.convert("cub200", tmp_path / "CUB_200_2011", dst)
    assert summary["counts"] == {"train": 5, "test": 4}
    names = protocol_class_names("cub200")
    train = load_protocol_split("cub200", "train", dst)
    assert train.labels.tolist() == [0, 0, 1, 2, 2]
    assert train.class_names == names
    folders = [f"{i + 1:03d}.{n}" for i, n in enumerate(names)]  # as the release names them
    assert train.sample_id(0) == f"train/{folders[0]}/{names[0]}_0000.jpg"
    test = load_protocol_split("cub200", "test", dst)
    assert [test.sample_id(i) for i in range(len(test))] == [
        f"test/{folders[0]}/{names[0]}_0001.jpg", f"test/{folders[1]}/{names[1]}_0001.jpg",
        f"test/{folders[2]}/{names[2]}_0000.jpg", f"test/{folders[2]}/{names[2]}_0003.jpg"]
    src_file = tmp_path / "CUB_200_2011" / "images" / folders[0] / f"{names[0]}_0000.jpg"
    assert (dst / "train" / folders[0] / src_file.name).stat().st_ino == src_file.stat().st_ino  # hard link
    assert (dst / "classes.txt").read_text().split("\n")[:3] == names
    shrink(monkeypatch, "cub200", 3, train=5, test=4)
    assert check_dataset("cub200", dst).ok
    with pytest.raises(convert_dataset.ConversionError, match="not empty"):
        convert_dataset.convert("cub200", tmp_path / "CUB_200_2011", dst)


def test_convert_cub200_refuses_a_foreign_class_list(tmp_path, monkeypatch):
    shrink(monkeypatch, "cub200", 3)
    src = tmp_path / "CUB"
    _fake_cub(src, [2, 2, 2], [[1, 0]] * 3)
    (src / "classes.txt").write_text((src / "classes.txt").read_text().replace("Laysan_Albatross", "Laysan"))
    with pytest.raises(convert_dataset.ConversionError, match="first difference at line 2"):
        convert_dataset.convert("cub200", src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_convert_food101(tmp_path, monkeypatch):
    shrink(monkeypatch, "food101", 3)
    src = tmp_path / "food-101"
    names = shipped_class_names("food101")
    (src / "meta").mkdir(parents=True)
    (src / "meta" / "classes.txt").write_text("\n".join(names) + "\n")
    train, test = [], []
    for c, name in enumerate(names[:4]):
        for j in range(3):
            save_image(src / "images" / name / f"{100 * c + j}.jpg", seed=c * 10 + j, fmt="JPEG")
            (test if j == 2 else train).append(f"{name}/{100 * c + j}")
    (src / "meta" / "train.txt").write_text("\n".join(train) + "\n")
    (src / "meta" / "test.txt").write_text("\n".join(test) + "\n")
    dst = tmp_path / "food101"
    result = CliRunner().invoke(app, ["data", "convert", "food101", str(src), str(dst), "--link", "copy"])
    assert result.exit_code == 0, result.output
    assert "next: spa-cil data check" in result.output
    source = load_protocol_split("food101", "test", dst)
    assert [source.sample_id(i) for i in range(3)] == [f"test/{n}/{100 * c + 2}.jpg" for c, n in enumerate(names[:3])]
    assert len(load_protocol_split("food101", "train", dst)) == 6
    copied = dst / "train" / names[0] / "0.jpg"
    assert copied.read_bytes() == (src / "images" / names[0] / "0.jpg").read_bytes()
    assert copied.stat().st_ino != (src / "images" / names[0] / "0.jpg").stat().st_ino
    assert json.loads((dst / "conversion.json").read_text())["counts"] == {"train": 6, "test": 3}


def _expected_split(counts: list[int], seed: int, fraction: float) -> list[set[int]]:
    """The documented rule written out by hand: one generator, classes in label order."""
    rng = np.random.default_rng(seed)
    out = []
    for n in counts:
        n_test = min(max(1, int(np.floor(n * fraction + 0.5))), n - 1)
        out.append(set(rng.permutation(n)[:n_test].tolist()))
    return out


def test_convert_imagenet_r_renames_wordnet_folders_and_splits_80_20(tmp_path, monkeypatch):
    shrink(monkeypatch, "imagenet_r", 3)
    wnids = convert_dataset.shipped_list("imagenet_r_wnids.txt")
    names = protocol_class_names("imagenet_r")
    src = tmp_path / "imagenet-r"
    counts = [5, 7, 11]
    for c, n in enumerate(counts):
        for j in range(n):
            save_image(src / wnids[c] / f"art_{j:02d}.jpg", seed=c * 100 + j, fmt="JPEG")
    dst = convert_dataset.convert("imagenet_r", src, tmp_path / "r")
    assert dst["counts"] == {"train": 4 + 6 + 9, "test": 1 + 1 + 2}
    test = load_protocol_split("imagenet_r", "test", tmp_path / "r")
    assert test.class_names == names == ["goldfish", "great white shark", "hammerhead"]
    got = [{int(test.sample_id(i).split("_")[-1][:2]) for i in range(len(test)) if test.labels[i] == c}
           for c in range(3)]
    assert got == _expected_split(counts, 1993, 0.2)
    again = convert_dataset.convert("imagenet_r", src, tmp_path / "r2")
    assert sorted(p.name for p in (tmp_path / "r2" / "test").rglob("*.jpg")) == \
        sorted(p.name for p in (tmp_path / "r" / "test").rglob("*.jpg")) and again["counts"] == dst["counts"]
    (src / "n99999999").mkdir()
    with pytest.raises(convert_dataset.ConversionError, match="not ImageNet-R WordNet ids"):
        convert_dataset.convert("imagenet_r", src, tmp_path / "r3")


def test_convert_objectnet_aircraft_sun_cars(tmp_path, monkeypatch):
    # ObjectNet: the first 3 shipped folders, extra classes of the release ignored
    shrink(monkeypatch, "objectnet", 3)
    on = tmp_path / "objectnet-1.0" / "images"
    for c, name in enumerate(shipped_class_names("objectnet")[:4]):
        for j in range(5):
            save_image(on / name / f"{j}.png", seed=c * 10 + j)
    summary = convert_dataset.convert("objectnet", tmp_path / "objectnet-1.0", tmp_path / "on")
    assert summary["counts"] == {"train": 12, "test": 3}
    assert load_protocol_split("objectnet", "train", tmp_path / "on").class_names == protocol_class_names("objectnet")

    # Aircraft: variant names with spaces and '/'
    variants = shipped_class_names("aircraft")
    official = [v.replace("F-16A_B", "F-16A/B").replace("F_A-18", "F/A-18") for v in variants]
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(official) + "\n")
    chosen = [official.index("BAE 146-200"), official.index("F/A-18"), 0]
    for split, ids in (("trainval", [0, 1, 2, 3, 4, 5]), ("test", [6, 7, 8])):
        (data / f"images_variant_{split}.txt").write_text(
            "".join(f"{1000 + i} {official[chosen[i % 3]]}\n" for i in ids))
    for i in range(9):
        save_image(data / "images" / f"{1000 + i}.jpg", seed=i, fmt="JPEG")
    monkeypatch.setitem(PROTOCOL_DATASETS, "aircraft",
                        dataclasses.replace(PROTOCOL_DATASETS["aircraft"], n_classes=100))
    with pytest.raises(convert_dataset.ConversionError, match="no train images for 97 protocol classes"):
        convert_dataset.convert("aircraft", tmp_path / "fgvc-aircraft-2013b", tmp_path / "air")
    assert (tmp_path / "air" / "train" / "F_A-18").exists() is False

    # SUN397: sub-categories merge into their scene
    sun = tmp_path / "sun"
    paths = ["/a/abbey", "/a/airplane_cabin", "/a/airport_terminal", "/a/apartment_building/outdoor"]
    shrink(monkeypatch, "sun397", 3)
    lines = {"Training": [], "Testing": []}
    for c, path in enumerate(paths[:3]):
        for j, stem in enumerate(("Training", "Training", "Testing")):
            rel = f"{path}/sun_{c}{j}.jpg"
            save_image(sun / "SUN397" / rel.strip("/"), seed=c * 10 + j, fmt="JPEG")
            lines[stem].append(rel)
    lines["Training"].append("/a/apartment_building/outdoor/sun_x.jpg")  # a 4th scene: outside the protocol
    (sun / "Partitions").mkdir(parents=True)
    for stem, entries in lines.items():
        (sun / "Partitions" / f"{stem}_01.txt").write_text("\n".join(entries) + "\n")
    summary = convert_dataset.convert("sun397", sun, tmp_path / "sun_out")
    assert summary["counts"] == {"train": 6, "test": 3}
    assert load_protocol_split("sun397", "test", tmp_path / "sun_out").class_names == ["abbey", "airplane_cabin",
                                                                                      "airport_terminal"]
    # Cars: devkit .mat files
    scipy_io = pytest.importorskip("scipy.io")
    shrink(monkeypatch, "cars", 2)
    cars = tmp_path / "cars"
    (cars / "devkit").mkdir(parents=True)
    official = [n.replace("Ram C_V", "Ram C/V") for n in shipped_class_names("cars")]
    scipy_io.savemat(cars / "devkit" / "cars_meta.mat", {"class_names": np.array(official, dtype=object)})
    for split, folder, fname, n in (("train", "cars_train", "cars_train_annos.mat", 3),
                                    ("test", "cars_test", "cars_test_annos_withlabels.mat", 2)):
        recs = np.zeros(n * 3, dtype=[("fname", object), ("class", np.uint8)])
        for k in range(n * 3):
            recs[k] = (f"{k:05d}.jpg", k % 3 + 1)  # class 3 is outside the shrunk protocol
            save_image(cars / folder / f"{k:05d}.jpg", seed=k, fmt="JPEG")
        scipy_io.savemat(cars / ("devkit" if split == "train" else ".") / fname, {"annotations": recs})
    summary = convert_dataset.convert("cars", cars, tmp_path / "cars_out")
    assert summary["counts"] == {"train": 6, "test": 4}
    source = load_protocol_split("cars", "train", tmp_path / "cars_out")
    assert source.class_names == ["AM General Hummer SUV 2000", "Acura RL Sedan 2012"]
    assert source.sample_id(0) == "train/AM_General_Hummer_SUV_2000/00000.jpg"  # LAMDA spelling


def test_protocol_module_has_no_global_state_between_tests():
    assert PROTOCOL_DATASETS["cub200"].n_classes == 200
    assert protocol.protocol_spec("sun397").class_file == "sun397_merged.txt"
