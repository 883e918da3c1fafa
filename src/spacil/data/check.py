"""Validate a protocol dataset folder before spending hours encoding it.

``check_dataset`` looks at everything that would make a run wrong or incomparable: the class folders
(against the shipped class list, and their sorted order against the release's labels), the number of
images per split (against the published counts or the conversion rule's: :mod:`.split_counts`), empty
classes, and every image file (opened and decoded with PIL, so truncated or corrupt files are named). Grayscale, CMYK, palette and RGBA images are counted but are
fine: they are converted to RGB when loaded.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from .datasets import IMAGE_EXTENSIONS, DatasetError, default_root
from .protocol import (class_folders, label_order_problem, layout_problems, load_protocol_split, match_folders,
                       protocol_class_names, protocol_spec)
from .split_counts import count_notes, expected_counts, label_order_notes

logger = logging.getLogger(__name__)

#: PIL modes reported by name; any other non-RGB mode is reported as itself.
MODE_NAMES = {"L": "grayscale", "LA": "grayscale+alpha", "1": "1-bit", "CMYK": "CMYK", "P": "palette",
              "RGBA": "RGBA", "I;16": "16-bit grayscale", "I": "32-bit grayscale", "YCbCr": "YCbCr"}


@dataclass
class SplitCheck:
    """What was found in one split folder."""

    split: str
    present: bool
    expected: int | None = None
    per_class: dict[str, int] = field(default_factory=dict)  # protocol classes whose folder exists
    empty_classes: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path relative to root, reason)
    modes: Counter = field(default_factory=Counter)  # non-RGB PIL modes -> count
    ignored_files: list[str] = field(default_factory=list)  # files without an image extension
    opened: int = 0

    @property
    def n_images(self) -> int:
        return sum(self.per_class.values())


@dataclass
class CheckReport:
    """Result of :func:`check_dataset`; ``problems`` empty means the folder is ready."""

    key: str
    title: str
    root: Path
    n_classes: int
    class_file: str
    splits: dict[str, SplitCheck] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    verified_images: bool = True
    max_listed: int = 5  # file names listed per kind of problem in render()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def unreadable(self) -> list[tuple[str, str]]:
        return [u for s in self.splits.values() for u in s.unreadable]

    def render(self, max_lines: int = 25) -> str:
        """A report that fits one screen: status first, then counts, then what is wrong."""
        status = "OK" if self.ok else f"{len(self.problems)} PROBLEM{'S' if len(self.problems) > 1 else ''}"
        lines = [f"dataset {self.key} ({self.title}) at {self.root}: {status}",
                 f"  classes: first {self.n_classes} of spacil/data/class_names/{self.class_file}"]
        for s in self.splits.values():
            if not s.present:
                lines.append(f"  {s.split + ':':6s} missing")
                continue
            counts = list(s.per_class.values())
            spread = f", {min(counts)}-{max(counts)} per class" if counts else ""
            expected = f" (expected {s.expected})" if s.expected is not None else " (no published count)"
            lines.append(f"  {s.split + ':':6s} {s.n_images} images in {len(s.per_class)} classes{expected}{spread}")
        if self.verified_images:
            opened = sum(s.opened for s in self.splits.values())
            modes = Counter()
            for s in self.splits.values():
                modes.update(s.modes)
            converted = ", ".join(f"{n} {MODE_NAMES.get(m, m)}" for m, n in modes.most_common())
            lines.append(f"  images decoded: {opened}, unreadable: {len(self.unreadable)}"
                         + (f"; converted to RGB on load (fine): {converted}" if converted else ""))
        else:
            lines.append("  images not decoded (quick check)")
        if self.problems:
            lines.append("problems:")
            lines.extend(f"  - {p}" for p in self.problems)
        bad = self.unreadable
        if bad:
            lines.append("unreadable images:")
            lines.extend(f"  {rel}: {reason}" for rel, reason in bad[: self.max_listed])
            if len(bad) > self.max_listed:
                lines.append(f"  ... and {len(bad) - self.max_listed} more (CheckReport.unreadable lists them all)")
        if self.notes:
            lines.append("notes:")
            lines.extend(f"  - {n}" for n in self.notes)
        if len(lines) > max_lines:
            hidden = len(lines) - (max_lines - 1)
            lines = lines[: max_lines - 1] + [f"  ... {hidden} more lines (see the CheckReport fields)"]
        return "\n".join(lines)


def _decode(path: Path) -> tuple[str | None, str | None]:
    """``(mode, None)`` for a decodable image, ``(None, reason)`` otherwise."""
    try:
        with Image.open(path) as img:
            mode = img.mode
            img.load()  # decodes every byte: this is what catches truncated files
        return mode, None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken files
        return None, f"{exc.__class__.__name__}: {exc}"


def decode_images(files: list[Path], workers: int, progress: bool, desc: str
                  ) -> Iterator[tuple[Path, str | None, str | None]]:
    """``(path, mode, reason)`` per file, decoded in ``workers`` threads (reason None when it decodes)."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(_decode, files, chunksize=64)
        for path, (mode, reason) in tqdm(zip(files, results), total=len(files), desc=desc, unit="img",
                                         disable=not progress, leave=False):
            yield path, mode, reason


def _shorten(items: list[str], limit: int) -> str:
    return ", ".join(items[:limit]) + (f" ... ({len(items) - limit} more)" if len(items) > limit else "")


def check_dataset(key: str, root: Path | str | None = None, verify_images: bool = True, workers: int = 4,
                  progress: bool = False, max_listed: int = 5) -> CheckReport:
    """Check the dataset folder of protocol dataset ``key`` (``root``, else ``$SPACIL_DATA_ROOT/<key>``).

    Never raises for problems of the data; they are collected in the report. ``workers`` threads decode
    images (PIL releases the GIL while decoding).
    """
    spec = protocol_spec(key)
    base = default_root(key, root)
    report = CheckReport(key, spec.title, base, spec.n_classes, spec.class_file, verified_images=verify_images)
    want = expected_counts(key, base)
    if not spec.image_folder:
        for split in ("train", "test"):
            expected = want[split]
            check = SplitCheck(split, present=False, expected=expected)
            report.splits[split] = check
            try:
                source = load_protocol_split(key, split, base)
            except DatasetError as exc:
                report.problems.append(str(exc))
                continue
            check.present = True
            counts = Counter(source.labels.tolist())
            check.per_class = {name: counts.get(i, 0) for i, name in enumerate(source.class_names)}
            if expected is not None and len(source) != expected:
                report.problems.append(f"{split}: {len(source)} images, expected {expected}")
        report.notes.extend(count_notes(key, base))
        report.verified_images = False
        return report
    if not base.is_dir():
        report.problems.append(f"dataset folder {base} does not exist")
        return report
    names = protocol_class_names(key)
    seen_problems: set[str] = set()
    for split in ("train", "test"):
        expected = want[split]
        check = SplitCheck(split, present=(base / split).is_dir(), expected=expected)
        report.splits[split] = check
        for problem in layout_problems(key, base, split):
            if problem not in seen_problems:
                seen_problems.add(problem)
                report.problems.append(problem)
        if not check.present:
            continue
        files: list[Path] = []
        found = class_folders(base / split)
        matched, _ = match_folders(key, found)
        folder_of = {n: f for f, n in zip(found, matched) if n is not None}
        if split == "train" and len(set(matched)) == len(matched) and set(matched) == set(names):
            report.notes.extend(label_order_notes(key, label_order_problem(key, found, matched)))  # type: ignore[arg-type]
        for name in names:
            if name not in folder_of:
                continue
            folder = base / split / folder_of[name]
            entries = sorted(e.name for e in os.scandir(folder) if e.is_file())
            images = [f for f in entries if f.lower().endswith(IMAGE_EXTENSIONS)]
            check.ignored_files.extend(f"{split}/{folder_of[name]}/{f}" for f in entries if f not in set(images))
            check.per_class[name] = len(images)
            if not images:
                check.empty_classes.append(name)
            files.extend(folder / f for f in images)
        if check.empty_classes:
            report.problems.append(f"{split}: {len(check.empty_classes)} empty classes: "
                                   f"{_shorten(check.empty_classes, max_listed)}")
        if expected is not None and check.n_images != expected:
            report.problems.append(f"{split}: {check.n_images} images, expected {expected}")
        if check.ignored_files:
            report.notes.append(f"{split}: {len(check.ignored_files)} files without an image extension ignored, "
                                f"e.g. {_shorten(check.ignored_files, 2)}")
        if verify_images and files:
            for path, mode, reason in decode_images(files, workers, progress, f"check {split}"):
                check.opened += 1
                if reason is not None:  # the path is already in the first column
                    check.unreadable.append((path.relative_to(base).as_posix(), reason.replace(str(path), path.name)))
                elif mode != "RGB":
                    check.modes[mode] += 1
    if want["total"] is not None and all(s.present for s in report.splits.values()):
        total = sum(s.n_images for s in report.splits.values())
        if total != want["total"]:
            report.problems.append(f"train + test hold {total} images, the release has {want['total']}")
    report.notes.extend(count_notes(key, base))
    if report.unreadable:
        report.problems.append(f"{len(report.unreadable)} unreadable images (left out with data.bad_images=skip, "
                               "fatal with data.bad_images=error); re-download or delete them")
    report.max_listed = max_listed
    return report
