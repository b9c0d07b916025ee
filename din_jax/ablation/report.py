"""Ablation reports: mean ± std over seeds per configuration, RelaImpr, Markdown and CSV tables, the chart.

``summarize`` aggregates a grid's outcome (the report) or a results file's records; ``plots.plot_ablation`` charts both.
"""

import csv
import io
import math
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from absl import logging

from din_jax.ablation.grid import FAILED, OK, PHASE_FINAL, GridOutcome, latest_by_key, record_metric
from din_jax.metrics import compute_relaimpr
from din_jax.version import describe

__all__ = (
    "METRICS Runs CSV_COLUMNS mean_std summarize compare_against format_markdown format_csv "
    "format_failures format_versions write_reports"
).split()

METRICS = (("test", "gauc"), ("test", "auc"), ("test", "logloss"), ("validation", "gauc"))
ABLATION_FIELDS = ("model", "attention", "activation", "regularizer")
Runs = Union[GridOutcome, Sequence[Dict[str, Any]]]  # a grid's outcome, or result records
CSV_COLUMNS = tuple(
    (
        "label runs_ok runs_failed tuned test_gauc_mean test_gauc_std test_auc_mean test_auc_std "
        "test_logloss_mean test_logloss_std validation_gauc_mean validation_gauc_std relaimpr_gauc_percent "
        "best_step samples_per_s wall_s seeds"
    ).split()
)


def mean_std(values: Sequence[Optional[float]]) -> Tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation of the finite values (std 0 for one value; None, None for none)."""
    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    if len(values) == 1:
        return values[0], 0.0
    return float(np.mean(values)), float(np.std(values, ddof=1))


def summarize(
    runs: Runs, baseline: Optional[str] = "base", metric: str = "gauc", split: str = "test"
) -> List[Dict[str, Any]]:
    """One row per configuration: mean ± std over its ok runs, RelaImpr of test GAUC against ``baseline``.

    ``runs``: a ``GridOutcome`` (a row per cell, over its final runs) or result records (the latest ok record of
    each run, final phase if any, grouped by dataset and ``cell`` or model/attention/activation/regularizer).
    Rows: the table's columns (``METRICS`` as (mean, std)), ``dataset``, ``config``, and ``mean``, ``std``, ``n``,
    ``values`` of ``split``'s ``metric``.
    """
    if isinstance(runs, GridOutcome):
        groups = [
            (
                "",
                {"configuration": cell.label},
                [runs.records[key] for key in runs.final_keys.get(cell.label, []) if key in runs.records],
                len(runs.final_keys.get(cell.label, [])),
                runs.tuned.get(cell.label),
            )
            for cell in runs.cells
        ]
    else:
        kept = list(latest_by_key([r for r in runs if r.get("status", OK) == OK]).values())
        if any(row.get("phase") == PHASE_FINAL for row in kept):
            kept = [row for row in kept if row.get("phase") == PHASE_FINAL]
        by_config: Dict[Tuple[str, Tuple[Tuple[str, str], ...]], List[Dict[str, Any]]] = {}
        for row in kept:
            dataset, config = _configuration(row)
            by_config.setdefault((dataset, tuple(config.items())), []).append(row)
        groups = [
            (dataset, dict(config), records, len(records), None) for (dataset, config), records in by_config.items()
        ]
    rows = []
    for dataset, config, records, planned, tuned in groups:
        ok = [r for r in records if r.get("status", OK) == OK]
        failed = sum(1 for r in records if r.get("status") == FAILED)
        values = [v for v in (record_metric(r, split, metric) for r in ok) if v is not None and math.isfinite(v)]
        row: Dict[str, Any] = {
            "label": " · ".join(config.values()),
            "dataset": dataset,
            "config": config,
            "runs_ok": len(ok),
            "runs_failed": failed,
            "runs_missing": planned - len(ok) - failed,
            "tuned": tuned,
            "seeds": [r.get("seed") for r in ok],
            "n": len(values),
            "values": values,
        }
        row["mean"], row["std"] = mean_std(values)
        for s, name in METRICS:
            row["%s_%s" % (s, name)] = mean_std([record_metric(r, s, name) for r in ok])
        for name in ("best_step", "samples_per_s", "wall_s"):
            row[name] = mean_std([r.get(name) for r in ok])[0]
        rows.append(row)
    for row in rows:
        base = next((r for r in rows if r["label"] == baseline and r["dataset"] == row["dataset"]), None)
        gauc, base_gauc = row["test_gauc"][0], base["test_gauc"][0] if base else None
        unset = base_gauc is None or gauc is None or row is base or base_gauc == 0.5
        row["relaimpr"] = None if unset else compute_relaimpr(gauc, base_gauc)
    return rows


def _configuration(row: Dict[str, Any]) -> Tuple[str, Dict[str, str]]:
    """(dataset, {field: text}) of a result row: its ``cell`` label, else model/attention/activation/regularizer."""
    flags = row.get("flags") or {}
    dataset = row.get("dataset") or flags.get("dataset") or ""
    dataset = os.path.basename(os.path.normpath(str(dataset))) if dataset else ""
    if "cell" in row:
        return dataset, {"configuration": _field_text(row["cell"])}
    model_config = flags.get("model_config") or {}
    fallback = {
        "model": flags.get("model"),
        "attention": model_config.get("attention"),
        "activation": model_config.get("activation"),
        "regularizer": ("mba %g" % flags["mba_lambda"])
        if flags.get("mba_lambda")
        else ("l2 %g" % flags["l2"])
        if flags.get("l2")
        else None,
    }
    return dataset, {f: _field_text(row[f] if f in row else fallback[f]) for f in ABLATION_FIELDS}


def _field_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "-".join(str(v) for v in value)
    return "none" if value is None or value is False else str(value)


def compare_against(rows: Sequence[Dict[str, Any]], label: str) -> List[Dict[str, Any]]:
    """Row ``label`` against every other on test GAUC: the difference, the spread (larger seed std), ``clear``."""
    target = next((row for row in rows if row["label"] == label), None)
    if target is None or target["test_gauc"][0] is None:
        return []
    out = []
    for row in rows:
        if row is target or row["test_gauc"][0] is None:
            continue
        diff = target["test_gauc"][0] - row["test_gauc"][0]
        spread = max(target["test_gauc"][1] or 0.0, row["test_gauc"][1] or 0.0)
        out.append({"against": row["label"], "difference": diff, "spread": spread, "clear": diff > spread})
    return out


def _pm(pair: Tuple[Optional[float], Optional[float]], digits: int = 4) -> str:
    return "n/a" if pair[0] is None else "%.*f ± %.*f" % (digits, pair[0], digits, pair[1])


def _number(value: Optional[float], form: str, missing: str = "n/a") -> str:
    return missing if value is None else form % value


def format_markdown(rows: Sequence[Dict[str, Any]], baseline: Optional[str] = "base") -> str:
    """The results table in Markdown (mean ± sample std over seeds)."""
    header = [
        "configuration",
        "runs",
        "tuned",
        "test GAUC",
        "test AUC",
        "test logloss",
        "validation GAUC",
        "RelaImpr vs %s (GAUC)" % baseline,
        "best step",
        "samples/s",
        "s/run",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        runs = "%d" % row["runs_ok"]
        if row["runs_failed"]:
            runs += " (%d failed)" % row["runs_failed"]
        if row["runs_missing"] > 0:
            runs += " (%d missing)" % row["runs_missing"]
        relaimpr = "—" if row["label"] == baseline else _number(row["relaimpr"], "%+.2f%%")
        cells = [
            row["label"],
            runs,
            row["tuned"] or "—",
            _pm(row["test_gauc"]),
            _pm(row["test_auc"]),
            _pm(row["test_logloss"]),
            _pm(row["validation_gauc"]),
            relaimpr,
            _number(row["best_step"], "%.0f"),
            _number(row["samples_per_s"], "%.0f"),
            _number(row["wall_s"], "%.0f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_csv(rows: Sequence[Dict[str, Any]]) -> str:
    """The results table as CSV (one column per mean and std)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        values = [row["label"], row["runs_ok"], row["runs_failed"], row["tuned"] or ""]
        for split, name in METRICS:
            values += [_number(value, "%.6f", "") for value in row["%s_%s" % (split, name)]]
        values += [
            _number(row["relaimpr"], "%.4f", ""),
            _number(row["best_step"], "%.0f", ""),
            _number(row["samples_per_s"], "%.0f", ""),
            _number(row["wall_s"], "%.1f", ""),
            " ".join(str(seed) for seed in row["seeds"]),
        ]
        writer.writerow(values)
    return buffer.getvalue()


def format_failures(outcome: GridOutcome) -> str:
    """Markdown list of the grid's failed and interrupted runs (empty string if none)."""
    lines = []
    for key in sorted(set(outcome.failed)):
        record = outcome.records.get(key, {})
        lines.append(
            "- `%s` %s (%s, seed %s): %s"
            % (key, record.get("cell"), record.get("phase"), record.get("seed"), record.get("error"))
        )
    for key in sorted(set(outcome.interrupted) - set(outcome.failed)):
        record = outcome.records.get(key, {})
        lines.append(
            "- `%s` %s (seed %s): interrupted in an earlier invocation, run again (now %s)"
            % (key, record.get("cell"), record.get("seed"), record.get("status"))
        )
    return "\n".join(lines) + ("\n" if lines else "")


def format_versions(records: Iterable[Dict[str, Any]]) -> str:
    """The code versions of the ok records: one line, so that a table says which code made it."""
    counts: Dict[str, int] = {}
    for record in records:
        if record.get("status") == OK:
            name = describe(record.get("code"))
            counts[name] = counts.get(name, 0) + 1
    if len(counts) == 1:
        return "Code version: %s (every run)." % next(iter(counts))
    parts = ", ".join("%s (%d runs)" % item for item in sorted(counts.items()))
    return "Code versions: %s: runs of different code are mixed." % (parts or "none")


def write_reports(
    outcome: GridOutcome,
    output_prefix: str,
    baseline: Optional[str] = "base",
    title: str = "",
    highlight: Optional[str] = None,
) -> Dict[str, str]:
    """Writes ``<prefix>.md``, ``<prefix>.csv`` and (with matplotlib) the chart ``<prefix>.png``; returns the paths."""
    rows = summarize(outcome, baseline)
    os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
    markdown = format_markdown(rows, baseline)
    comparison = compare_against(rows, highlight) if highlight else []
    if comparison:
        markdown += "\n%s against each other configuration (test GAUC; spread = the larger seed std):\n\n" % highlight
        for item in comparison:
            verdict = (
                "better by more than the spread"
                if item["clear"]
                else "within the spread"
                if item["difference"] > 0
                else "not better"
            )
            markdown += "- vs %s: %+.4f (spread %.4f): %s\n" % (
                item["against"],
                item["difference"],
                item["spread"],
                verdict,
            )
    versions = format_versions(outcome.records.values())
    markdown += "\n%s\n" % versions
    failures = format_failures(outcome)
    if failures:
        markdown += "\nFailed or interrupted runs:\n\n" + failures
    paths = {"markdown": output_prefix + ".md", "csv": output_prefix + ".csv"}
    for kind, text in (("markdown", markdown), ("csv", format_csv(rows))):
        with open(paths[kind], "w", encoding="utf-8") as handle:
            handle.write(text)
    try:
        from din_jax import plots
    except ImportError:
        logging.warning("matplotlib is not installed: no chart written to %s.png", output_prefix)
    else:
        if any(row["n"] for row in rows):
            paths["chart"] = plots.plot_ablation(outcome, output_prefix + ".png", title=title or None, note=versions)
    return paths
