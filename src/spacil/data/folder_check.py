"""``spa-cil data check`` for the generic image folder (``root/{train,test}/<class>/<images>``).

A user's own dataset has no published counts to compare with, so this checks what would make a run fail
or quietly train on less: missing splits, classes in one split only, classes without images, files of size
zero, files that are not images (the loader ignores them), and images PIL cannot decode (named one by
one). Never raises for problems of the data: they are findings in the report, which fits one screen.
Kept apart from :mod:`spacil.data.check` (the protocol datasets' checks against their release counts).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


from .check import decode_images
from .datasets import IMAGE_EXTENSIONS

SPLITS = ("train", "test")


@dataclass
class FolderFinding:
    """One thing wrong with the folder: its kind, the path relative to the root, and why."""

    kind: str  # "missing", "classes", "empty class", "empty file", "not an image", "unreadable"
    path: str
    reason: str = ""


@dataclass
class FolderReport:
    """Result of :func:`check_image_folder`; no findings means the folder is ready to encode."""

    root: Path
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> images
    findings: list[FolderFinding] = field(default_factory=list)
    decoded: int = 0
    verified_images: bool = True

    @property
    def ok(self) -> bool:
        return not self.findings

    def of_kind(self, kind: str) -> list[FolderFinding]:
        return [f for f in self.findings if f.kind == kind]

    def render(self, max_lines: int = 24, per_kind: int = 5) -> str:
        """Status, counts, then up to ``per_kind`` findings of each kind; the rest summarised with a count."""
        status = "OK" if self.ok else f"{len(self.findings)} PROBLEM{'S' if len(self.findings) > 1 else ''}"
        lines = [f"image folder {self.root}: {status}"]
        for split, per_class in self.counts.items():
            n = list(per_class.values())
            spread = f", {min(n)}-{max(n)} per class" if n else ""
            lines.append(f"  {split + ':':6s} {sum(n)} images in {len(n)} classes{spread}")
        lines.append(f"  images decoded: {self.decoded}" if self.verified_images else "  images not decoded (quick check)")
        kinds = list(dict.fromkeys(f.kind for f in self.findings))
        for kind in kinds:
            found = self.of_kind(kind)
            lines.append(f"{kind} ({len(found)}):")
            lines.extend(f"  {f.path}" + (f": {f.reason}" if f.reason else "") for f in found[:per_kind])
            if len(found) > per_kind:
                lines.append(f"  ... and {len(found) - per_kind} more")
        if len(lines) > max_lines:
            lines = lines[:max_lines - 1] + [f"... {len(lines) - max_lines + 1} more lines (FolderReport.findings)"]
        if not self.ok:
            lines.append("fix or delete the files named above, then check again")
        return "\n".join(lines)


def _scan_class(root: Path, split: str, name: str, report: FolderReport) -> list[Path]:
    """Images of one class folder to decode; empty and non-image files become findings."""
    images: list[Path] = []
    for entry in sorted(os.scandir(root / split / name), key=lambda e: e.name):
        rel = f"{split}/{name}/{entry.name}"
        if entry.name.startswith("."):
            continue  # hidden files (.DS_Store) are nobody's images
        if not entry.is_file():
            report.findings.append(FolderFinding("not an image", rel, "a folder inside a class folder is ignored"))
        elif entry.stat().st_size == 0:
            report.findings.append(FolderFinding("empty file", rel, "0 bytes"))
        elif not entry.name.lower().endswith(IMAGE_EXTENSIONS):
            report.findings.append(FolderFinding("not an image", rel, "no image extension: the loader ignores it"))
        else:
            images.append(Path(entry.path))
    report.counts[split][name] = len(images)
    return images


def check_image_folder(root: Path | str, verify_images: bool = True, workers: int = 4,
                       progress: bool = False) -> FolderReport:
    """Check a generic image folder; ``workers`` threads decode the images (PIL releases the GIL)."""
    root = Path(root).expanduser()
    report = FolderReport(root, verified_images=verify_images)
    if not root.is_dir():
        report.findings.append(FolderFinding("missing", str(root), "the dataset folder does not exist"))
        return report
    classes: dict[str, set[str]] = {}
    for split in SPLITS:
        if not (root / split).is_dir():
            report.findings.append(FolderFinding("missing", f"{split}/", f"expected {root}/{split}/<class>/<images>"))
            continue
        report.counts[split] = {}
        classes[split] = set()
        files: list[Path] = []
        for entry in sorted(os.scandir(root / split), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            if not entry.is_dir():
                report.findings.append(FolderFinding("not an image", f"{split}/{entry.name}",
                                                     "a file outside any class folder is ignored"))
                continue
            classes[split].add(entry.name)
            images = _scan_class(root, split, entry.name, report)
            if not images:
                report.findings.append(FolderFinding("empty class", f"{split}/{entry.name}/", "no images"))
            files.extend(images)
        if verify_images and files:
            for path, _, reason in decode_images(files, workers, progress, f"check {split}"):
                report.decoded += 1
                if reason is not None:
                    report.findings.append(FolderFinding("unreadable", path.relative_to(root).as_posix(),
                                                         reason.replace(str(path), path.name)))
    if len(classes) == 2 and classes["train"] != classes["test"]:
        for split, other in (("train", "test"), ("test", "train")):
            for name in sorted(classes[split] - classes[other]):
                report.findings.append(FolderFinding("classes", f"{split}/{name}/", f"no {other}/{name}/ folder"))
    return report
