"""Run the protocol presets and write one table beside the published figures: a thin use of `spa-cil matrix`.

    python scripts/run_protocol.py --data-root /data [--presets cifar100_b0_inc10,cub200_b0_inc20] \
        [--methods spa,simplecil] [--seeds 1993] [--output runs/protocol] [--set backbone.batch_size=512]

is exactly ``spa-cil matrix --presets protocol --variants spa,simplecil --data-root /data --output runs/protocol``
(every other matrix option passes through, e.g. ``--executor gpus``); the table is ``results.md`` /
``results.csv`` in the output folder, rebuilt any time by ``spa-cil results runs/protocol``. See docs/matrix.md.
"""

from __future__ import annotations

import argparse

from spacil.cli import app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, help="Folder with one sub-folder per dataset.")
    parser.add_argument("--presets", default="protocol", help="Comma-separated presets (default: all 18 splits).")
    parser.add_argument("--methods", default="spa,simplecil,ranpac,proof,rapf,engine,clg_cbm",
                        help="Comma-separated variants.")
    parser.add_argument("--seeds", default="1993")
    parser.add_argument("--output", default="runs/protocol")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args, rest = parser.parse_known_args()
    argv = ["matrix", "--presets", args.presets, "--variants", args.methods, "--seeds", args.seeds,
            "--data-root", args.data_root, "--output", args.output, *[a for s in args.overrides for a in ("--set", s)],
            *rest]
    app(argv)


if __name__ == "__main__":
    main()
