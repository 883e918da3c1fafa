"""Reproduce the shipped parts-world tiny CLIP weights (CPU, a few minutes).

    python scripts/pretrain_partsworld_clip.py            # writes src/spacil/assets/partsworld_clip.*

The report (``.json``) records the settings, the loss history, a held-out alignment check and the
sha256 of the weights file. With the same torch version and thread count the run is deterministic.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import torch

from spacil.partsworld.pretrain import PretrainSettings, pretrain

ASSETS = Path(__file__).resolve().parents[1] / "src" / "spacil" / "assets"


def tensors_sha256(path: Path) -> str:
    """sha256 over the tensors in name order: what a rerun reproduces bit for bit (the file's header
    layout may differ between writes, so the file's own sha256 identifies the shipped file only)."""
    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for name, tensor in sorted(load_file(str(path)).items()):
        digest.update(name.encode())
        digest.update(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for field in dataclasses.fields(PretrainSettings):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    parser.add_argument("--output", type=Path, default=ASSETS / "partsworld_clip.safetensors")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    settings = PretrainSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainSettings)})
    torch.set_num_threads(settings.threads)  # the result depends on it (reduction order)
    report = pretrain(settings, args.output)
    report["sha256"] = hashlib.sha256(args.output.read_bytes()).hexdigest()
    report["tensors_sha256"] = tensors_sha256(args.output)
    report["command"] = "python scripts/pretrain_partsworld_clip.py " + " ".join(
        f"--{f.name.replace('_', '-')} {getattr(settings, f.name)}" for f in dataclasses.fields(PretrainSettings)
        if getattr(settings, f.name) != f.default)
    args.output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["held_out"]), report["sha256"])


if __name__ == "__main__":
    main()
