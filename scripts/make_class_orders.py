"""Write the shipped class-order files: the LAMDA/PROOF protocol's seed-1993 numpy permutation.

The protocol draws ``np.random.seed(1993); np.random.permutation(n_classes)``. We reproduce the same
numbers with a private ``RandomState(1993)`` (identical stream, no global RNG) and store them as data,
so runs never depend on RNG state. Rerun: ``python scripts/make_class_orders.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PROTOCOL_CLASS_COUNTS = {
    "cifar100": 100,
    "cub200": 200,
    "imagenet_r": 200,
    "objectnet": 200,
    "aircraft": 100,
    "cars": 100,
    "food101": 100,
    "ucf101": 100,
    "sun397": 300,
}
SEED = 1993
SOURCE = ("PyCIL (github.com/G-U-N/PyCIL) and PROOF (github.com/zhoudw-zdw/PROOF): utils/data_manager.py shuffles class indices with np.random.seed(1993); np.random.permutation(n)")


def main() -> None:
    out = Path(__file__).resolve().parents[1] / "src" / "spacil" / "data" / "class_orders"
    out.mkdir(parents=True, exist_ok=True)
    for dataset, n in PROTOCOL_CLASS_COUNTS.items():
        order = np.random.RandomState(SEED).permutation(n).tolist()
        doc = {
            "dataset": dataset,
            "n_classes": n,
            "seed": SEED,
            "recipe": f"np.random.seed({SEED}); np.random.permutation({n})",
            "source": SOURCE,
            "order": order,
        }
        (out / f"{dataset}.json").write_text(json.dumps(doc) + "\n")
        print(f"{dataset}: {order[:5]} ...")


if __name__ == "__main__":
    main()
