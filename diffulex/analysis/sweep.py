"""A multirun directory → one table (overrides, TPF, NFE, throughput, quality) and a plot.

Each job of ``experiments/generate.py -m ...`` writes ``results.json`` into its job
directory (see ``diffulex.integrations.experiment``). A job directory is any folder with a
``.hydra/`` subfolder, so the basic launcher's and submitit's layouts both work; a job
that died before writing its results shows up with status ``missing``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Optional, Union

# Columns after the overrides: (table header, results key or summary key).
METRIC_COLUMNS = (("tpf", "tpf"), ("nfe", "nfe"), ("throughput", "throughput"),
                  ("wall_time_s", "wall_time_s"), ("quality", "quality"))
PathLike = Union[str, Path]


def _parse_overrides(overrides: list[str]) -> dict[str, str]:
    out = {}
    for item in overrides:
        key, _, value = item.partition("=")
        out[key] = value
    return out


def load_sweep(multirun_dir: PathLike) -> list[dict[str, Any]]:
    """One row per job under ``multirun_dir``: job, status, overrides, metrics, error (job order)."""
    root = Path(multirun_dir)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory (pass the multirun sweep directory, e.g. multirun/DATE/TIME)")
    job_dirs = sorted({p.parent for p in root.rglob(".hydra") if p.is_dir()}, key=_job_order)
    rows = []
    for job_dir in job_dirs:
        results_path = job_dir / "results.json"
        if results_path.is_file():
            res = json.loads(results_path.read_text())
        else:
            res = {"status": "missing", "overrides": _hydra_overrides(job_dir),
                   "error": "no results.json (the job died before writing it)"}
        summary = res.get("summary") or {}
        row = {"job": str(job_dir.relative_to(root)), "status": res.get("status", "missing"),
               "overrides": _parse_overrides(res.get("overrides", [])), "error": res.get("error")}
        for column, key in METRIC_COLUMNS:
            row[column] = res.get(key) if key in res else summary.get(key)
        row["resources"] = res.get("resources") or {}
        rows.append(row)
    if not rows:
        raise ValueError(f"no Hydra job directories (folders with .hydra/) under {root}")
    return rows


def _job_order(path: Path) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in path.parts)


def _hydra_overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    # overrides.yaml is a YAML list of plain strings ("- key=value"); no YAML library needed.
    return [line[2:].strip().strip("'\"") for line in path.read_text().splitlines() if line.startswith("- ")]


def varying_keys(rows: list[dict[str, Any]]) -> list[str]:
    """Override keys whose value differs between jobs, in first-seen order."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row["overrides"] if k not in keys]
    return [k for k in keys if len({row["overrides"].get(k) for row in rows}) > 1]


def table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """(header, body): job, the varying overrides, the metrics, status."""
    keys = varying_keys(rows)
    header = ["job", *keys, *(c for c, _ in METRIC_COLUMNS), "status"]
    body = [[row["job"], *(row["overrides"].get(k, "") for k in keys), *(row[c] for c, _ in METRIC_COLUMNS),
             row["status"]] for row in rows]
    return header, body


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """A Markdown table, then the overrides every job shared, then each failed job's error."""
    header, body = table(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in line) + " |" for line in body]
    varying = set(varying_keys(rows))
    shared = {k: v for k, v in rows[0]["overrides"].items() if k not in varying}
    if shared:
        lines += ["", "Shared overrides: " + " ".join(f"`{k}={v}`" for k, v in shared.items())]
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        lines += ["", f"{len(failed)} of {len(rows)} job(s) failed:"]
        lines += [f"- job {r['job']}: {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict[str, Any]], path: PathLike) -> None:
    header, body = table(rows)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*header, "error"])
        for line, row in zip(body, rows):
            writer.writerow([*("" if v is None else v for v in line), row["error"] or ""])


def plot_sweep(rows: list[dict[str, Any]], path: Optional[PathLike] = None,
               metrics: tuple[str, ...] = ("tpf", "throughput", "quality")) -> Any:
    """One bar chart per metric, a bar per job labelled by its varying overrides; saved when ``path``."""
    import matplotlib.pyplot as plt

    keys = varying_keys(rows)
    labels = [", ".join(f"{k.split('.')[-1]}={r['overrides'].get(k, '')}" for k in keys) or r["job"] for r in rows]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 + 1.2 * len(rows), 3.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        values = [r[metric] if r[metric] is not None else 0.0 for r in rows]
        colors = ["tab:blue" if r["status"] == "ok" else "tab:red" for r in rows]
        ax.bar(range(len(rows)), values, color=colors)
        ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_title(metric)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return fig


def summarize(multirun_dir: PathLike, out_dir: Optional[PathLike] = None) -> dict[str, Any]:
    """Write ``summary.md``, ``summary.csv`` and ``summary.png`` (into ``out_dir``, default the sweep dir)."""
    rows = load_sweep(multirun_dir)
    out = Path(out_dir or multirun_dir)
    out.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(rows)
    (out / "summary.md").write_text(markdown)
    write_csv(rows, out / "summary.csv")
    plot_sweep(rows, out / "summary.png")
    return {"rows": rows, "markdown": markdown, "paths": [str(out / f"summary.{e}") for e in ("md", "csv", "png")]}
