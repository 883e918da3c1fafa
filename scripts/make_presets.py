"""Write one preset per protocol split: B0 and B-half splits of the nine datasets, as in the PROOF
repository's experiment configs (github.com/zhoudw-zdw/PROOF, ``exps/*.json``).

Rerun after changing the table: ``python scripts/make_presets.py``.
"""

from __future__ import annotations

from pathlib import Path

# dataset key -> (classes used by the protocol, increment)
SPLITS = {
    "cifar100": (100, 10), "aircraft": (100, 10), "cars": (100, 10), "food101": (100, 10), "ucf101": (100, 10),
    "cub200": (200, 20), "imagenet_r": (200, 20), "objectnet": (200, 20),
    "sun397": (300, 30),
}


def main() -> None:
    out = Path(__file__).resolve().parents[1] / "src" / "spacil" / "configs"
    for dataset, (n, inc) in SPLITS.items():
        for base in (0, n // 2):
            name = f"{dataset}_b{base}_inc{inc}"
            text = (f"# {dataset} B{base} Inc{inc}: SPA with the protocol backbone "
                    f"({'equal tasks' if base == 0 else f'{base} base classes, then {inc} per task'}).\n"
                    f"extends: spa_protocol\ndata:\n  dataset: {dataset}\n  init_cls: {base or inc}\n  increment: {inc}\n")
            (out / f"{name}.yaml").write_text(text)
            print(name)


if __name__ == "__main__":
    main()
