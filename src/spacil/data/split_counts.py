"""What a dataset folder's split counts should be, and how faithful its split is to the published one.

The numbers live in ``split_counts.json`` (data, with their source). A folder written by ``spa-cil data
convert`` (it holds ``conversion.json``) is held to the count of its conversion rule; any other folder is
taken as the processed release as distributed and held to the release's published count, where one is
published. Where none is, the check prints the count and says so instead of inventing one.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from .protocol import protocol_spec

CONVERSION_FILE = "conversion.json"


@lru_cache(maxsize=1)
def _table() -> dict[str, Any]:
    return json.loads((resources.files("spacil.data") / "split_counts.json").read_text(encoding="utf-8"))


def published_counts(key: str) -> dict[str, Any] | None:
    """The release's published ``{"train", "test", "source"}`` for ``key``, or None when none is published."""
    return _table()[key]["release"]


def converted_by_us(root: Path) -> bool:
    """Whether ``root`` was written by ``spa-cil data convert`` (it leaves ``conversion.json``)."""
    return (Path(root) / CONVERSION_FILE).is_file()


def expected_counts(key: str, root: Path) -> dict[str, Any]:
    """``{"train", "test", "total", "source"}`` the check compares with; None where nothing is known."""
    spec = protocol_spec(key)
    if spec.image_folder and converted_by_us(root):
        known = spec.expected_train is not None or spec.expected_total is not None
        return {"train": spec.expected_train, "test": spec.expected_test, "total": spec.expected_total,
                "source": "the conversion rule in docs/datasets.md" if known else ""}
    release = published_counts(key)
    if release is None:
        return {"train": None, "test": None, "total": None, "source": ""}
    return {"train": release["train"], "test": release["test"], "total": None, "source": release["source"]}


def split_fidelity(key: str, root: Path) -> str:
    """One line: is this folder's split the one the published tables used?"""
    converter = _table()[key]["converter"]
    if not protocol_spec(key).image_folder:
        return f"split: {converter['rule']} (same images as the published tables)"
    if not converted_by_us(root):
        return ("split: taken as the processed release as distributed (no conversion.json); its counts are "
                + ("checked against the published ones" if published_counts(key) else "not published, so not checked"))
    same = converter["same_split_as_release"]
    verdict = {True: "the same split as the published tables",
               False: "NOT the processed release's split: comparable in setting, not image for image",
               None: "not verified against the processed release"}[same]
    return f"split: converted ({converter['rule']}): {verdict}"


def count_notes(key: str, root: Path) -> list[str]:
    """The notes ``data check`` prints about counts: where the expected ones come from, and the split."""
    source = expected_counts(key, root)["source"]
    return ([f"counts expected from: {source}"] if source else []) + [split_fidelity(key, root)]


def label_order_notes(key: str, order_problem: str | None) -> list[str]:
    """Notes on the label order: where the release's folder spelling is unknown, and any difference found."""
    if not protocol_spec(key).spelling_unknown:
        return []  # a differing order is a problem there, reported by layout_problems
    notes = ["labels: sorted folder names (ImageFolder); the processed release's folder spelling is not "
             "known to us and changes this order (spaces vs underscores)"]
    if order_problem:
        notes.append(order_problem + " (followed: labels come from the folders found)")
    return notes
