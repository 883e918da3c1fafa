"""Which code computed a run: package version, sha256 over the package's source files, git commit.

A run folder's key covers its config and features, not the code; recording the code lets a rerun notice
that a learner was edited since, instead of returning the numbers the old code produced.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from .environment import git_commit

#: The installed package's own folder (``spacil/``): what the source hash covers.
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
#: Large binary assets (the parts-world CLIP weights) are left out: the feature keys hash the weights already.
SKIPPED_PARTS = ("__pycache__", "assets")
SOURCE_SUFFIXES = (".py", ".json", ".yaml", ".yml", ".txt")
#: What must match for a finished run to be reused (the git commit is recorded, not compared: a commit of
#: documentation alone does not change results).
COMPARED_FIELDS = ("spacil", "source_sha256")


@lru_cache(maxsize=4)
def source_digest(root: Path = PACKAGE_ROOT) -> str:
    """sha256 over the relative path and bytes of every source and data file of the package (sorted)."""
    digest = hashlib.sha256()
    files = sorted(p for p in Path(root).rglob("*") if p.is_file() and p.suffix in SOURCE_SUFFIXES
                   and not set(p.relative_to(root).parts) & set(SKIPPED_PARTS))
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _package_version() -> str | None:
    try:
        return metadata.version("spacil")
    except metadata.PackageNotFoundError:
        return None


def code_version(root: Path | None = None) -> dict:
    """``{"spacil": version, "source_sha256": ..., "git_commit": sha[+dirty] or None}`` of the running code."""
    root = Path(root) if root is not None else PACKAGE_ROOT
    return {"spacil": _package_version(), "source_sha256": source_digest(root), "git_commit": git_commit(root)}


def code_difference(recorded: dict | None, current: dict) -> str | None:
    """What differs between a run's recorded code and ``current`` in words, ``None`` when they match."""
    if recorded is None:
        return "no code version is recorded (the run predates code.json)"
    changed = []
    for key in COMPARED_FIELDS:
        if recorded.get(key) != current.get(key):
            old, new = recorded.get(key), current.get(key)
            if key == "source_sha256":
                old, new = (str(v)[:12] if v else v for v in (old, new))
            changed.append(f"{key} {old} -> {new}")
    if not changed:
        return None
    commits = (recorded.get("git_commit"), current.get("git_commit"))
    where = f" (git {commits[0] or '?'} -> {commits[1] or '?'})" if any(commits) else ""
    return ", ".join(changed) + where
