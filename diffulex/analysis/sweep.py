"""A multirun directory → one table of what ran and how it scored, the AUP per strategy, and plots.

Each job of ``experiments/generate.py -m ...`` or ``experiments/evaluate.py -m ...`` writes
``results.json`` into its job directory (``diffulex.integrations.job``). A job directory is any
folder with a ``.hydra/`` subfolder, so the basic launcher's and submitit's layouts both work; a
job that died before writing its results shows up with status ``missing``.

The table lists what *ran*: the normalized strategy and every resolved setting that differs
between jobs (not only the overrides asked for), the values the config rules changed, then the
metrics (``diffulex.engine.metrics`` definitions): accuracy (an evaluation's, or a generate run's
``quality``), TPF, mean NFE, decode and end-to-end tok/s. With accuracies, ``plot_tradeoff`` draws
accuracy against TPF and against decode tok/s, one line per strategy, the Pareto front marked.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Optional, Union

from diffulex.engine import metrics as M

# (column, results["metrics"] key of an evaluation, results["summary"] key of a generate run)
METRIC_COLUMNS = (("accuracy", "accuracy", None), ("tpf", "tpf", "tpf"), ("mean_nfe", "mean_nfe", "mean_nfe"),
                  ("decode_tps", "decode_tps", "decode_throughput"), ("e2e_tps", "e2e_tps", "throughput"),
                  ("wall_time_s", "wall_time_s", "wall_time_s"))
PathLike = Union[str, Path]


def _parse_overrides(overrides: list[str]) -> dict[str, str]:
    out = {}
    for item in overrides:
        key, _, value = item.partition("=")
        out[key.lstrip("+~")] = value
    return out


def load_sweep(multirun_dir: PathLike) -> list[dict[str, Any]]:
    """One row per job under ``multirun_dir``: job, status, overrides, ran, changed, metrics, error."""
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
        summary, evaluated = res.get("summary") or {}, res.get("metrics") or {}
        row = {"job": str(job_dir.relative_to(root)), "status": res.get("status", "missing"),
               "overrides": _parse_overrides(res.get("overrides", [])), "error": res.get("error"),
               "ran": res.get("ran") or {}, "normalized": res.get("normalized") or [],
               "task": (res.get("task") or {}).get("name")}
        for column, eval_key, gen_key in METRIC_COLUMNS:
            row[column] = evaluated.get(eval_key) if evaluated else summary.get(gen_key) if gen_key else None
        if row["accuracy"] is None and res.get("quality") is not None:
            row["accuracy"] = res["quality"]
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


def _settings(row: dict[str, Any]) -> dict[str, Any]:
    """What ran (resolved), plus the overrides that are not resolved settings (task=..., components...)."""
    out = {k: str(v) for k, v in row["ran"].items()}
    for k, v in row["overrides"].items():
        out.setdefault(k, v)
    if row["task"] is not None:
        out.setdefault("task", row["task"])
    return out


def varying_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The columns that tell jobs apart: every override that differs between jobs, shown with the
    value that *ran* (``strategy`` first), plus the sampling mode when the resolved one differs
    (a strategy preset may pick it)."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row["overrides"] if k not in keys]
    if any(r["ran"] for r in rows):
        keys += [k for k in ("strategy", "sampling.mode") if k not in keys]
    varying = [k for k in keys if len({_settings(r).get(k) for r in rows}) > 1]
    return sorted(varying, key=lambda k: (k != "strategy", keys.index(k)))


def changed(row: dict[str, Any]) -> str:
    """The config rules' changes of a job, ``key: requested -> used`` joined by ``; ``."""
    return "; ".join(f"{c['key']}: {c['requested']} -> {c['used']}" for c in row["normalized"])


def table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """(header, body): job, the varying settings, the rules' changes, the metrics, status."""
    keys = varying_keys(rows)
    rules = any(r["normalized"] for r in rows)
    header = ["job", *keys, *(["changed by the config rules"] if rules else []),
              *(c for c, _, _ in METRIC_COLUMNS), "status"]
    body = [[row["job"], *(_settings(row).get(k, "") for k in keys), *([changed(row)] if rules else []),
             *(row[c] for c, _, _ in METRIC_COLUMNS), row["status"]] for row in rows]
    return header, body


def method_of(row: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """A strategy line's label: the strategy that ran; plus its sampling mode when the sweep runs
    that strategy in several modes, and the task / model when those vary (thresholds vary along a
    line, not between lines)."""
    s = _settings(row)
    label = s.get("strategy") or row["job"]
    same = [_settings(r) for r in rows if _settings(r).get("strategy") == s.get("strategy")]
    if len({o.get("sampling.mode") for o in same}) > 1:
        label += f" {s.get('sampling.mode', '')}"
    for k in ("task", "model"):
        if len({_settings(r).get(k) for r in rows}) > 1:
            label += f" {s.get(k, '')}"
    return label


def _points(rows: list[dict[str, Any]], x: str) -> dict[str, list[tuple[float, float, dict]]]:
    lines: dict[str, list[tuple[float, float, dict]]] = {}
    for r in rows:
        if r["status"] == "ok" and r["accuracy"] is not None and r[x]:
            lines.setdefault(method_of(r, rows), []).append((float(r[x]), 100.0 * r["accuracy"], r))
    return {k: sorted(v, key=lambda p: p[0]) for k, v in lines.items()}


def aup_table(rows: list[dict[str, Any]]) -> dict[str, float]:
    """AUP (``metrics.aup``) per strategy line over its (TPF, accuracy %) points; ``y_max`` is the
    best accuracy of the whole sweep, as d3LLM compares methods on one task."""
    lines = _points(rows, "tpf")
    if not lines:
        return {}
    y_max = max(y for pts in lines.values() for _, y, _ in pts)
    return {m: M.aup([(x, y) for x, y, _ in pts], y_max=y_max) for m, pts in lines.items()}


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both axes (higher x and higher accuracy), by x."""
    front = [p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]
    return sorted(set(front))


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """The table, the AUP per strategy, the shared overrides, then each failed job's error."""
    header, body = table(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in line) + " |" for line in body]
    aups = aup_table(rows)
    if aups:
        lines += ["", "| strategy | points | AUP (d3LLM, accuracy in %) |", "|---|---|---|"]
        counts = {m: len(p) for m, p in _points(rows, "tpf").items()}
        lines += [f"| {m} | {counts[m]} | {a:.1f} |" for m, a in sorted(aups.items(), key=lambda kv: -kv[1])]
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


def plot_tradeoff(rows: list[dict[str, Any]], path: Optional[PathLike] = None) -> Any:
    """Accuracy vs TPF and accuracy vs decode tok/s: a line per strategy, the Pareto front ringed."""
    import matplotlib.pyplot as plt

    aups = aup_table(rows)
    # The setting that moves a point along its line (e.g. strategy.accept_threshold), if one varies.
    tag = next((k for k in varying_keys(rows) if k not in ("strategy", "sampling.mode", "task", "model")), None)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    panels = (("tpf", "tokens per forward (TPF, returned tokens / NFE)"),
              ("decode_tps", "decode throughput (returned tokens / s of engine steps)"))
    for ax, (x, label) in zip(axes, panels):
        lines = _points(rows, x)
        cmap = plt.get_cmap("tab10" if len(lines) <= 10 else "tab20")
        for i, (method, pts) in enumerate(sorted(lines.items())):
            name = f"{method} (AUP {aups[method]:.0f})" if method in aups else method
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4, lw=1.2, alpha=0.85,
                    color=cmap(i % cmap.N), label=name)
            if tag and sum(len(v) for v in lines.values()) <= 40:  # few points: name each one's setting
                same: dict[tuple[float, float], list[str]] = {}  # coinciding points share one label
                for px, py, r in pts:
                    same.setdefault((round(px, 2), round(py, 1)), []).append(_settings(r).get(tag, ""))
                for (px, py), names in same.items():
                    ax.annotate("/".join(names), (px, py), textcoords="offset points", xytext=(4, 2 + 7 * (i % 2)),
                                fontsize=6, color=cmap(i % cmap.N))
        front = pareto_front([(p[0], p[1]) for pts in lines.values() for p in pts])
        if front:
            ax.plot([p[0] for p in front], [p[1] for p in front], ls="none", marker="o", ms=10, mfc="none",
                    mec="black", mew=1.2, label="Pareto front")
        values = [p[0] for pts in lines.values() for p in pts]
        if values and min(values) > 0 and max(values) / min(values) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.set_ylim(-3, 103)
    tasks = sorted({r["task"] for r in rows if r["task"]})
    n_ok = sum(r["status"] == "ok" for r in rows)
    fig.suptitle(f"{', '.join(tasks) or 'sweep'}: {n_ok} of {len(rows)} job(s)"
                 + (f"; points labelled by {tag}" if tag and len(rows) <= 40 else ""))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.04 * ((len(labels) - 1) // 4), 1, 1))
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def plot_sweep(rows: list[dict[str, Any]], path: Optional[PathLike] = None,
               metrics: tuple[str, ...] = ("tpf", "decode_tps", "e2e_tps")) -> Any:
    """Sweeps without accuracies: a bar chart per metric, a bar per job labelled by its settings."""
    import matplotlib.pyplot as plt

    keys = varying_keys(rows)
    labels = [", ".join(f"{k.split('.')[-1]}={_settings(r).get(k, '')}" for k in keys) or r["job"] for r in rows]
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
    """Write ``summary.md``, ``summary.csv`` and ``summary.png`` (into ``out_dir``, default the sweep dir).

    The PNG is the accuracy trade-off when jobs have accuracies, else bars of TPF and tok/s.
    """
    rows = load_sweep(multirun_dir)
    out = Path(out_dir or multirun_dir)
    out.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(rows)
    (out / "summary.md").write_text(markdown)
    write_csv(rows, out / "summary.csv")
    has_accuracy = any(r["accuracy"] is not None and r["status"] == "ok" for r in rows)
    (plot_tradeoff if has_accuracy else plot_sweep)(rows, out / "summary.png")
    return {"rows": rows, "markdown": markdown, "aup": aup_table(rows),
            "paths": [str(out / f"summary.{e}") for e in ("md", "csv", "png")]}
