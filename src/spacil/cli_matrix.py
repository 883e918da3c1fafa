"""``spa-cil matrix`` and ``spa-cil results``: kept apart from cli.py, registered there in two lines."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def _csv(text: Optional[str]) -> list[str] | None:
    return [v.strip() for v in text.split(",") if v.strip()] if text else None


def matrix(file: Optional[Path] = typer.Option(None, "--file", "-f", help="Matrix YAML (presets, variants, seeds, "
                                               "overrides, data_root, output, executor, devices, slurm); the "
                                               "options below override its keys."),
           presets: Optional[str] = typer.Option(None, help="Comma-separated presets or YAML paths; 'protocol' = "
                                                 "the 18 protocol splits."),
           variants: Optional[str] = typer.Option(None, help="Comma-separated variants (see `spa-cil info`)."),
           seeds: Optional[str] = typer.Option(None, help="Comma-separated training seeds (default 1993)."),
           set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help="Override for every cell (repeatable)."),
           data_root: Optional[Path] = typer.Option(None, help="Folder with one sub-folder per dataset."),
           output: Optional[Path] = typer.Option(None, help="Output folder (default runs/matrix)."),
           executor: Optional[str] = typer.Option(None, help="sequential (default), gpus (one worker per device) "
                                                  "or slurm (submitit)."),
           devices: Optional[str] = typer.Option(None, help="gpus executor: e.g. 0,1,2,3 or cpu,cpu (default: "
                                                 "every visible GPU)."),
           slurm_partition: Optional[str] = typer.Option(None, help="Slurm partition."),
           slurm_time: Optional[int] = typer.Option(None, help="Minutes per Slurm job (default 240); a cell that "
                                                    "hits it is requeued and resumes."),
           slurm_gpus: Optional[int] = typer.Option(None, help="GPUs per Slurm job (default 1)."),
           slurm_cpus: Optional[int] = typer.Option(None, help="CPUs per Slurm job (default 8)."),
           slurm_parallelism: Optional[int] = typer.Option(None, help="Most cells running at once (default 64)."),
           slurm_cluster: Optional[str] = typer.Option(None, help="slurm (default) or local: the same submitit jobs "
                                                       "as local processes."),
           overwrite: bool = typer.Option(False, "--overwrite", help="Redo every cell, finished or not."),
           progress: bool = typer.Option(True, help="Show progress bars (sequential executor).")) -> None:
    """Run presets x variants x seeds (each cell a resumable run folder), then write the results table."""
    from .cli import USER_ERRORS, _fail, _seeds
    from .runs.results import results_markdown, write_results
    from .training.matrix import build_spec, load_matrix_file, outcomes_markdown, run_matrix

    try:
        data = load_matrix_file(file) if file else {}
        given = {"presets": _csv(presets), "variants": _csv(variants), "seeds": _seeds(seeds) if seeds else None,
                 "data_root": data_root, "output": output, "executor": executor, "devices": _csv(devices)}
        data.update({k: v for k, v in given.items() if v is not None})
        if set_:
            data["overrides"] = [*data.get("overrides", []), *set_]
        if overwrite:
            data["overwrite"] = True
        slurm = {"partition": slurm_partition, "time_min": slurm_time, "gpus_per_job": slurm_gpus,
                 "cpus_per_job": slurm_cpus, "array_parallelism": slurm_parallelism, "cluster": slurm_cluster}
        if any(v is not None for v in slurm.values()):
            data["slurm"] = {**data.get("slurm", {}), **{k: v for k, v in slurm.items() if v is not None}}
        spec = build_spec(data, str(file) if file else "matrix options")
        outcomes = run_matrix(spec, progress=progress)
        rows, table = write_results(spec.output)
    except USER_ERRORS as exc:
        _fail(exc)
    typer.echo(outcomes_markdown(outcomes))
    typer.echo(results_markdown(rows))
    typer.echo(f"table: {table} (and results.csv); cells: {spec.output / 'matrix.json'}")
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        typer.secho(f"{len(failed)} of {len(outcomes)} cells failed:", err=True, fg=typer.colors.RED)
        for o in failed:
            typer.secho(f"  {o.preset} / {o.variant} / seed {o.seed}: {o.error}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=1)


def results(root: Path = typer.Argument(..., help="Folder holding run folders (searched recursively)."),
            output: Optional[Path] = typer.Option(None, help="Where results.md / results.csv go (default ROOT)."),
            published: bool = typer.Option(True, help="Published figures beside ours where known.")) -> None:
    """One table over the finished runs below ROOT: method x split, mean ± sample std over seeds."""
    from .cli import USER_ERRORS, _fail
    from .runs.results import results_markdown, write_results

    try:
        rows, table = write_results(root, output, published)
    except USER_ERRORS as exc:
        _fail(exc)
    typer.echo(results_markdown(rows))
    typer.echo(f"table: {table} (and results.csv)")
