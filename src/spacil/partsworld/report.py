"""The demo's report folder: a markdown and an HTML page over the comparison table and its pictures."""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..config import Config, load_config
from ..data.catalog import load_split
from ..runs.plots import plot_accuracy_matrix
from ..io import write_json_atomic, write_text_atomic
from ..runs.run_folder import RunFolder
from ..training.compare import ComparisonRow, comparison_markdown
from ..training.harness import PreparedData, load_rows, restore_learner
from .alignment import plot_alignment
from .classes import make_class_specs
from .mechanism import Mechanism, image_components, measure_mechanism

logger = logging.getLogger(__name__)


def _heatmaps(output: Path, rows: Sequence[ComparisonRow]) -> list[tuple[str, str]]:
    """One accuracy-matrix heatmap per variant (first seed), as (variant, relative path)."""
    out = []
    for row in rows:
        folder = Path(row.folders[0])
        matrix_csv = folder / "accuracy_matrix.csv"
        if not matrix_csv.is_file():
            continue
        lines = matrix_csv.read_text().strip().splitlines()[1:]
        matrix = np.array([[float(v) if v else np.nan for v in line.split(",")[1:]] for line in lines])
        path = output / "plots" / f"accuracy_matrix_{row.variant}.png"
        plot_accuracy_matrix(path, matrix, f"{row.variant}: R[t, j]")
        out.append((row.variant, str(path.relative_to(output))))
    return out


def _alignment_picture(output: Path, data: PreparedData, row: ComparisonRow, n_images: int = 6) -> str | None:
    """OT alignment of a few test images under the final SPA model (restored from its run folder)."""
    folder = Path(row.folders[0])
    last = data.scenario.n_tasks - 1
    if not RunFolder(folder).checkpoint_path(last).is_file():
        return None
    cfg = load_config(folder / "config.yaml")
    device = torch.device("cpu")
    learner = restore_learner(cfg, data, folder, last, device)
    # one image from each of the first few classes of the last groups (classes that differ by parts)
    rows = []
    for label in np.linspace(0, data.scenario.n_classes - 1, n_images).astype(int):
        rows.append(int(np.flatnonzero(data.test_labels == label)[0]))
    batch = load_rows(data.test, np.array(rows), data.test_labels, device)
    order = np.sort(np.array(rows))  # load_rows sorts rows
    predicted = learner.logits(batch, data.scenario.n_classes).argmax(-1).tolist()
    matches = learner.alignment(batch.patches, batch.labels.tolist(), data.scenario.n_classes)
    source = load_split(cfg.data.dataset, "test", cfg.data.root)
    index_of = {sid: i for i, sid in enumerate(source.sample_id(i) for i in range(len(source)))}
    images = [source.load(index_of[data.test.sample_ids[r]]) for r in order]
    path = output / "plots" / "alignment.png"
    plot_alignment(path, images, matches, data.scenario.class_names, predicted, data.backbone.grid_size)
    return str(path.relative_to(output))


def _html_table(markdown: str) -> str:
    """A small markdown table as HTML (empty string for no table)."""
    lines = [line.strip().strip("|").split("|") for line in markdown.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    head = "".join(f"<th>{html.escape(c.strip())}</th>" for c in lines[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in row) + "</tr>" for row in lines[2:])
    return f"<h2>The patch mechanism</h2><table><tr>{head}</tr>{body}</table>"


def _uses_patch_branch(config: Config) -> bool:
    return config.method.name == "spa" and config.method.spa.patch_branch


def mechanism_rows(data: PreparedData, rows: Sequence[ComparisonRow], world_seed: int, image_size: int
                   ) -> list[tuple[str, Mechanism]]:
    """Mechanism metrics of every SPA variant with a patch branch (first seed, model after the last task)."""
    last = data.scenario.n_tasks - 1
    candidates = []
    for row in rows:
        folder = Path(row.folders[0])
        if (folder / "config.yaml").is_file() and RunFolder(folder).checkpoint_path(last).is_file():
            cfg = load_config(folder / "config.yaml")
            if _uses_patch_branch(cfg):
                candidates.append((row.variant, cfg, folder))
    if not candidates:
        return []
    specs = {s.name: s for s in make_class_specs(data.scenario.n_classes, world_seed)}
    class_specs = [specs[name] for name in data.scenario.class_names]
    patch = image_size // data.backbone.grid_size[0]
    components = image_components(list(specs.values()), data.test.sample_ids, world_seed, image_size, patch)
    patches = torch.from_numpy(np.asarray(data.test.patches, dtype=np.float32))
    labels = torch.from_numpy(data.test_labels.astype(np.int64))
    out = []
    for variant, cfg, folder in candidates:
        learner = restore_learner(cfg, data, folder, last, torch.device("cpu"))
        out.append((variant, measure_mechanism(learner, patches, labels, components, class_specs,
                                               data.scenario.n_classes)))
    return out


def mechanism_markdown(measured: Sequence[tuple[str, Mechanism]]) -> str:
    lines = ["| variant | selection precision | random selection | phrase assignment | patch-branch accuracy "
             "| phrases naming a part |",
             "|---|---|---|---|---|---|"]
    for variant, m in measured:
        lines.append(f"| {variant} | {m.selection_precision:.3f} | {m.random_precision:.3f} | "
                     f"{m.phrase_assignment:.3f} | {m.patch_accuracy:.2f} | {m.part_phrase_share:.3f} |")
    return "\n".join(lines) + "\n"


def _error_rate_figure(path: Path, ablations: dict) -> Path:
    """SPA's margin over the best other row (Ā and A_B) against the describer's error-rate multiplier."""
    from ..runs.plots import new_figure

    entries = ablations["error_rates"]
    fig = new_figure(figsize=(5, 3.5), dpi=120)
    ax = fig.subplots()
    factors = [e["factor"] for e in entries]
    for metric, label in (("average", "Ā"), ("last", "A_B")):
        ax.plot(factors, [e[metric]["margin"] for e in entries], marker="o", label=f"{label}: SPA − best other row")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xticks(factors)
    ax.set_xlabel("describer error rates (× default)")
    ax.set_ylabel("margin (points)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def ablations_markdown(ablations: dict) -> str:
    """The guidance ablation and the error-rate sweep as markdown tables."""
    lines = []
    guidance = ablations.get("guidance")
    if guidance:
        lines += ["| SPA's descriptions from | Ā | A_B |", "|---|---|---|"]
        for name, values in guidance.items():
            lines.append(f"| {name} guidance images | {np.mean(values['average']):.2f} | {np.mean(values['last']):.2f} |")
        lines.append("")
    lines += ["| error rates | SPA Ā | best other (Ā) | margin Ā | SPA A_B | best other (A_B) | margin A_B |",
              "|---|---|---|---|---|---|---|"]
    for e in ablations["error_rates"]:
        a, b = e["average"], e["last"]
        lines.append(f"| ×{e['factor']:g} | {a['spa']:.2f} | {a['best_other']} {a['best_other_value']:.2f} | "
                     f"{a['margin']:+.2f} | {b['spa']:.2f} | {b['best_other']} {b['best_other_value']:.2f} | "
                     f"{b['margin']:+.2f} |")
    return "\n".join(lines) + "\n"


def write_demo_report(output: Path, base: Config, data: PreparedData, rows: Sequence[ComparisonRow],
                      image_size: int, world_seed: int = 0, ablations: dict | None = None) -> Path:
    """``report.md``, ``report.html``, ``mechanism.md``/``.json`` and (with ``ablations``)
    ``description_ablations.md``/``.json`` in ``output``; returns the markdown path."""
    (output / "plots").mkdir(exist_ok=True)
    heatmaps = _heatmaps(output, rows)
    measured = mechanism_rows(data, rows, world_seed, image_size)
    mechanism = mechanism_markdown(measured) if measured else ""
    if measured:
        write_text_atomic(output / "mechanism.md", mechanism)
        write_json_atomic(output / "mechanism.json", {v: m.as_dict() for v, m in measured})
    alignment = None
    spa_rows = [r for r in rows if r.variant == "spa"]
    if spa_rows:
        try:
            alignment = _alignment_picture(output, data, spa_rows[0])
        except Exception as exc:  # noqa: BLE001 - a picture must never cost the report
            logger.warning("alignment picture not written: %s", exc)
    sc = data.scenario
    setup = (f"Parts world: {sc.n_classes} classes in {sc.n_tasks} tasks {list(sc.task_sizes)}; "
             f"{len(data.train)} training and {len(data.test)} test images ({image_size}x{image_size}); backbone `{base.backbone.name}`; "
             f"seeds {', '.join(map(str, rows[0].seeds))}. Descriptions: {data.descriptions['source'] if data.descriptions else '-'}.")
    table = comparison_markdown(rows)
    md = ["# spacil demo: SPA on parts world", "", setup, "", "## Results", "", table,
          "Average accuracy Ā is the mean over stages of top-1 on all seen classes; A_B is the last stage.", "",
          "![accuracy per stage](accuracy_per_stage.png)", ""]
    if mechanism:
        md += ["## The patch mechanism (ground-truth part masks, model after the last task, first seed)", "",
               mechanism, "Selection precision: share of the patches selected for an image's own class that lie "
               "on its parts; random selection would score the share of part patches. Phrase assignment: share of "
               "the transport mass from a part's patches that goes to that part's phrase (a phrase that is not one of "
               "its class's ground-truth part phrases counts as naming no part). Patch-branch accuracy: "
               "the patch score alone, all classes. Phrases naming a part: share of the description phrases used "
               "that map to one of their class's parts (the rest name body shape, colour, or no part at all).", ""]
    if alignment:
        md += ["## Patch-level alignment (SPA, after the last task)", "", f"![alignment]({alignment})", ""]
    ablation_md = ""
    if ablations:
        ablation_md = ablations_markdown(ablations)
        write_text_atomic(output / "description_ablations.md", ablation_md)
        write_json_atomic(output / "description_ablations.json", ablations)
        figure = _error_rate_figure(output / "plots" / "error_rates.png", ablations)
        md += ["## Descriptions: guidance images and describer errors", "", ablation_md,
               "Rows that read the description file were rerun with each description set; the other rows do "
               "not read it. Best other row: the best default row other than SPA and its `spa_*` ablations.", "",
               f"![error rates]({figure.relative_to(output)})", ""]
    md += ["## Accuracy matrices", ""] + [f"![{v}]({p})" for v, p in heatmaps]
    md += ["", "Files: `comparison.csv`, `comparison.json`, one run folder per method under `runs/`."]
    write_text_atomic(output / "report.md", "\n".join(md) + "\n")

    rows_html = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in line.strip("|").split("|")) + "</tr>"
        for line in table.strip().splitlines()[2:])
    head = "".join(f"<th>{html.escape(c.strip())}</th>" for c in table.splitlines()[0].strip("|").split("|"))
    images = [("Accuracy per stage", "accuracy_per_stage.png")]
    if alignment:
        images.append(("Patch-level alignment (SPA, after the last task)", alignment))
    images += [(f"Accuracy matrix: {v}", p) for v, p in heatmaps]
    body = "".join(f"<h2>{html.escape(t)}</h2><img src='{html.escape(p)}' style='max-width:100%'>" for t, p in images)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>spacil demo</title>"
            f"<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}td,th{{padding:4px 10px;"
            f"border-bottom:1px solid #ddd}}</style></head><body><h1>spacil demo: SPA on parts world</h1>"
            f"<p>{html.escape(setup)}</p><table><tr>{head}</tr>{rows_html}</table>{_html_table(mechanism)}{body}"
            f"</body></html>")
    write_text_atomic(output / "report.html", page)
    return output / "report.md"
