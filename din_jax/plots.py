"""Figures of runs: training curves, attention over one user's history, ablation bars.

matplotlib is used through its object API with the Agg canvas (no pyplot, no
global backend switch), so it draws on machines without a display and leaves
other users of matplotlib in the process alone. Every function writes one PNG
and returns its path.
"""

import collections
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from matplotlib import colors as mcolors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from din_jax.train.observers import TRAIN_LOG_FILE, read_train_log

ABLATION_FIELDS = ("model", "attention", "activation", "regularizer")
_DPI = 150
_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
# Categories: tab20, strong colours first, then their light variants.
_CATEGORY_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                     "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
                     "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"]


def _text_color(color) -> str:
    red, green, blue = mcolors.to_rgb(color)
    return "white" if 0.299 * red + 0.587 * green + 0.114 * blue < 0.55 else "#222222"


def _save(fig: Figure, path: str) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    FigureCanvasAgg(fig)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=_DPI, bbox_inches="tight", facecolor="white")
    os.replace(tmp, path)
    return path


def _style(ax) -> None:
    ax.grid(True, color="#e6e6e6", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


# ---------------------------------------------------------------------------
# Training curves.


def load_run(run_dir: str) -> Dict[str, Any]:
    """A run directory's curves: per-call training loss and validation metrics against steps.

    Reads ``summary.json`` (its evaluation history, best step) and
    ``train_log.jsonl`` (per-call losses); either may be missing, not both.

    Returns:
      ``{"name", "train": [(step, loss)], "evaluations": [(step, metrics)],
      "best_step", "test"}``.
    """
    summary_path = os.path.join(run_dir, "summary.json")
    log_path = os.path.join(run_dir, TRAIN_LOG_FILE)
    summary = None
    if os.path.isfile(summary_path):
        with open(summary_path) as handle:
            summary = json.load(handle)
    rows = read_train_log(log_path) if os.path.isfile(log_path) else []
    if summary is None and not rows:
        raise ValueError("%s has neither summary.json nor %s: not a run directory" % (run_dir, TRAIN_LOG_FILE))
    train = [(int(r["step"]), float(r["loss"])) for r in rows if r.get("event") == "train"]
    if summary is not None:
        evaluations = [(int(h["step"]), h["validation"]) for h in summary.get("history", []) if h.get("validation")]
    else:
        evaluations = [(int(r["step"]), r["validation"]) for r in rows
                       if r.get("event") == "evaluation" and r.get("validation")]
    return {
        "name": os.path.basename(os.path.normpath(run_dir)),
        "train": sorted(train),
        "evaluations": sorted(evaluations, key=lambda e: e[0]),
        "best_step": summary.get("best_step") if summary else None,
        "test": summary.get("test") if summary else None,
    }


def _smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard-style exponential moving average, debiased at the start."""
    out = np.empty_like(values, dtype=np.float64)
    average, correction = 0.0, 0.0
    for i, value in enumerate(values):
        average = weight * average + (1 - weight) * value
        correction = weight * correction + (1 - weight)
        out[i] = average / correction
    return out


def plot_training_curves(run_dirs: Sequence[str], path: str, labels: Optional[Sequence[str]] = None,
                         metric: str = "gauc") -> str:
    """Training loss and validation ``metric`` against steps for one or several runs.

    The loss is drawn per host call (faint) with an exponential moving average
    (solid); the selected (best) step of each run is starred on the metric
    panel, with its test value in the legend.
    """
    runs = [load_run(d) for d in run_dirs]
    labels = list(labels) if labels else [run["name"] for run in runs]
    if len(labels) != len(runs):
        raise ValueError("%d labels for %d runs" % (len(labels), len(runs)))
    fig = Figure(figsize=(11.5, 4.2))
    loss_ax, metric_ax = fig.subplots(1, 2)
    for index, (run, label) in enumerate(zip(runs, labels)):
        color = _PALETTE[index % len(_PALETTE)]
        if run["train"]:
            steps = np.array([s for s, _ in run["train"]])
            losses = np.array([v for _, v in run["train"]])
            finite = np.isfinite(losses)
            steps, losses = steps[finite], losses[finite]
            loss_ax.plot(steps, losses, color=color, alpha=0.25, linewidth=1)
            weight = min(0.9, max(0.0, 1.0 - 8.0 / max(len(losses), 1)))
            loss_ax.plot(steps, _smooth(losses, weight), color=color, linewidth=2, label=label)
        if run["evaluations"]:
            steps = [s for s, _ in run["evaluations"]]
            values = [m.get(metric, float("nan")) for _, m in run["evaluations"]]
            test = (run["test"] or {}).get(metric)
            legend = label + ("  (test %s %.4f)" % (metric.upper(), test) if test is not None else "")
            metric_ax.plot(steps, values, color=color, linewidth=2, marker="o", markersize=4, label=legend)
            if run["best_step"] in steps:
                best = values[steps.index(run["best_step"])]
                metric_ax.plot([run["best_step"]], [best], marker="*", markersize=15, color=color,
                               markeredgecolor="black", markeredgewidth=0.7, linestyle="none", zorder=5)
    loss_ax.set_title("Training loss (per host call; line: moving average)")
    loss_ax.set_xlabel("step (micro-batches)")
    loss_ax.set_ylabel("sigmoid cross-entropy")
    metric_ax.set_title("Validation %s (star: the step selected)" % metric.upper())
    metric_ax.set_xlabel("step (micro-batches)")
    metric_ax.set_ylabel(metric.upper())
    for ax in (loss_ax, metric_ax):
        _style(ax)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(frameon=False, fontsize=9, loc="best")
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------
# Attention of one user's history against several candidates.


ATTENTION_SCALES = ("auto", "global", "rows")
# Below this share of the whole range, the differences inside a row are lost
# in one colour per row under a common scale (rows offset from each other).
_ROW_SPREAD_SHARE = 0.25


def attention_colour_scale(weights_CxL: np.ndarray, scale: str = "auto") -> Dict[str, Any]:
    """How the attention heat map colours its cells: a pure function of the weights.

    ``global``: one scale for every cell. With weights of both signs it is
    diverging and centred on 0 (hue: the sign, depth: the magnitude); with
    one sign it spans the weights' own range, so that weights of -2.18 to
    -2.13 get distinct colours instead of one pale shade of a scale stretched
    to 0; the colour deepens with the magnitude there too (DIN's raw weights
    multiply the history embeddings, so a weight of -0.7 takes in more of
    its item than one of -0.2). ``rows``: the magnitudes of each candidate's
    row from its smallest (0) to its largest (1), since a candidate's
    weights only matter relative to the rest of its own weighted sum.
    ``auto``: ``rows`` when the typical spread within a row is under a
    quarter of the whole range (rows offset from each other would each get
    one flat colour), else ``global``.

    Returns:
      ``{"scale": "global"|"rows", "values": [C, L] array to colour, "vmin",
      "vmax", "vcenter" (0.0 for a diverging scale, else None), "cmap"}``.
    """
    if scale not in ATTENTION_SCALES:
        raise ValueError("attention scale %r; choose from %s" % (scale, list(ATTENTION_SCALES)))
    weights_CxL = np.asarray(weights_CxL, dtype=np.float64)
    low, high = float(weights_CxL.min()), float(weights_CxL.max())
    if scale == "auto":
        spread = float(np.median(weights_CxL.max(axis=1) - weights_CxL.min(axis=1)))
        scale = "rows" if high > low and spread < _ROW_SPREAD_SHARE * (high - low) else "global"
    if scale == "rows":
        magnitude = np.abs(weights_CxL)
        row_low = magnitude.min(axis=1, keepdims=True)
        row_span = magnitude.max(axis=1, keepdims=True) - row_low
        values = np.where(row_span > 0, (magnitude - row_low) / np.where(row_span > 0, row_span, 1.0), 0.5)
        return {"scale": "rows", "values": values, "vmin": 0.0, "vmax": 1.0, "vcenter": None, "cmap": "Purples"}
    if low < 0.0 < high:
        return {"scale": "global", "values": weights_CxL, "vmin": low, "vmax": high, "vcenter": 0.0,
                "cmap": "RdBu_r"}
    if high == low:  # one value: any non-empty range draws it in the middle colour
        pad = max(abs(high) * 1e-6, 1e-9)
        low, high = low - pad, high + pad
    # The diverging map's halves, so that hue keeps meaning the sign: red
    # deepening upwards for positive weights, blue deepening downwards for
    # negative ones.
    return {"scale": "global", "values": weights_CxL, "vmin": low, "vmax": high, "vcenter": None,
            "cmap": "Reds" if high > 0.0 else "Blues_r"}


def annotation_decimals(weights_CxL: np.ndarray) -> int:
    """Decimals that tell a row's weights apart: two, up to four when a typical row spans less than 0.1.

    The weights compared are those of one candidate (a row), so the typical
    row's spread decides, not the whole table's.
    """
    weights_CxL = np.asarray(weights_CxL, dtype=np.float64)
    if weights_CxL.size == 0:
        return 2
    spreads = weights_CxL.max(axis=1) - weights_CxL.min(axis=1)
    spreads = spreads[spreads > 0]
    if not len(spreads):
        return 2
    return int(min(4, max(2, math.ceil(-math.log10(float(np.median(spreads)))) + 1)))


def plot_attention(history_items: Sequence[int], history_categories: Sequence[int],
                   candidate_items: Sequence[int], candidate_categories: Sequence[int],
                   weights_CxL: np.ndarray, probabilities_C: Sequence[float], path: str,
                   title: Optional[str] = None, category_names: Optional[Dict[int, str]] = None,
                   scale: str = "auto") -> str:
    """A heat map of the attention weight of each history item (columns) for each candidate (rows).

    The DIN paper's illustration of local activation: different candidates
    activate different behaviours of the same user. Cells carry the raw
    weights; their colours follow ``attention_colour_scale(weights, scale)``.
    Cells whose history item shares the candidate's category are outlined;
    the candidates' predicted click probabilities are drawn beside.
    """
    weights_CxL = np.asarray(weights_CxL, dtype=np.float64)
    count, length = weights_CxL.shape
    if length == 0:
        raise ValueError("the history is empty: nothing to show")
    names = category_names or {}

    def category_label(category: int) -> str:
        return names.get(int(category), "cat %d" % int(category))

    fig = Figure(figsize=(min(4.0 + 0.55 * length, 18.0), 1.6 + 0.62 * count))
    grid = fig.add_gridspec(2, 3, width_ratios=[max(length, 4), 3.2, 0.25], height_ratios=[0.6, count],
                            wspace=0.06, hspace=0.05)
    strip_ax = fig.add_subplot(grid[0, 0])
    heat_ax = fig.add_subplot(grid[1, 0], sharex=strip_ax)
    bar_ax = fig.add_subplot(grid[1, 1], sharey=heat_ax)
    color_ax = fig.add_subplot(grid[:, 2])

    colours = attention_colour_scale(weights_CxL, scale)
    if colours["vcenter"] is not None:
        norm = mcolors.TwoSlopeNorm(vmin=colours["vmin"], vcenter=colours["vcenter"], vmax=colours["vmax"])
    else:
        norm = mcolors.Normalize(vmin=colours["vmin"], vmax=colours["vmax"])
    image = heat_ax.imshow(colours["values"], aspect="auto", cmap=colours["cmap"], norm=norm,
                           interpolation="nearest")
    if length <= 30:
        decimals = annotation_decimals(weights_CxL)
        for c in range(count):
            for j in range(length):
                shade = image.cmap(image.norm(colours["values"][c, j]))
                heat_ax.text(j, c, "%.*f" % (decimals, weights_CxL[c, j]), ha="center", va="center",
                             fontsize=7 if decimals <= 2 else 6, color=_text_color(shade))
    for c in range(count):
        for j in range(length):
            if int(history_categories[j]) == int(candidate_categories[c]):
                heat_ax.add_patch(Rectangle((j - 0.5, c - 0.5), 1, 1, fill=False, edgecolor="#ff7f0e", linewidth=2.2))
    heat_ax.set_yticks(range(count))
    heat_ax.set_yticklabels(["item %d · %s" % (int(i), category_label(k))
                             for i, k in zip(candidate_items, candidate_categories)], fontsize=9)
    heat_ax.set_xticks(range(length))
    heat_ax.set_xticklabels(["%d" % int(i) for i in history_items], rotation=60, fontsize=8)
    heat_ax.set_xlabel("history item ids, oldest → newest  (outlined: same category as the candidate)")
    heat_ax.set_ylabel("candidate")

    # The categories of the history, as a colour strip with labels.
    distinct = sorted({int(k) for k in history_categories} | {int(k) for k in candidate_categories})
    palette = {k: _CATEGORY_PALETTE[i % len(_CATEGORY_PALETTE)] for i, k in enumerate(distinct)}
    strip = np.array([[mcolors.to_rgb(palette[int(k)]) for k in history_categories]])
    strip_ax.imshow(strip, aspect="auto", interpolation="nearest")
    for j, k in enumerate(history_categories):
        strip_ax.text(j, 0, category_label(k).replace("cat ", "c"), ha="center", va="center", fontsize=7,
                      color=_text_color(palette[int(k)]))
    strip_ax.set_yticks([0])
    strip_ax.set_yticklabels(["category"], fontsize=9)
    strip_ax.tick_params(axis="x", labelbottom=False, bottom=False)
    for spine in strip_ax.spines.values():
        spine.set_visible(False)

    probabilities = np.asarray(probabilities_C, dtype=np.float64)
    bar_ax.barh(range(count), probabilities, color=[palette[int(k)] for k in candidate_categories], alpha=0.85)
    for c, p in enumerate(probabilities):
        bar_ax.text(min(p + 0.02, 0.98), c, "%.3f" % p, va="center", ha="left" if p < 0.8 else "right", fontsize=8)
    bar_ax.set_xlim(0, 1)
    bar_ax.set_xlabel("predicted CTR")
    bar_ax.tick_params(axis="y", labelleft=False, left=False)
    bar_ax.grid(True, axis="x", color="#e6e6e6")
    for side in ("top", "right"):
        bar_ax.spines[side].set_visible(False)
    colorbar = fig.colorbar(image, cax=color_ax)
    if colours["scale"] == "rows":
        colorbar.set_ticks([0.0, 0.5, 1.0])
        colorbar.set_ticklabels(["row's smallest", "", "row's largest"])
        colorbar.set_label("|attention weight| within each row")
    else:
        if colours["vcenter"] is not None:  # a two-slope norm gets no automatic ticks below zero
            low, high = colours["vmin"], colours["vmax"]
            ticks = np.concatenate([np.linspace(low, 0.0, 3), np.linspace(0.0, high, 5)[1:]])
            colorbar.set_ticks(ticks)
            colorbar.set_ticklabels(["%.2f" % t for t in ticks])
        colorbar.set_label("attention weight")
    fig.suptitle(title or "One user's history, attended by different candidates", fontsize=12, y=0.99)
    return _save(fig, path)


class SampleOutOfRangeError(ValueError):
    """A sample index outside its split; ``sample``, ``split`` and ``size`` say which."""

    def __init__(self, sample: int, split: str, size: int):
        super().__init__("sample %d is not in the %s split, whose samples are 0 to %d" % (sample, split, size - 1))
        self.sample, self.split, self.size = sample, split, size


def _first_varied_history(source: Any, split: str, samples: np.ndarray, item_category: np.ndarray,
                          max_seq_len: int, min_categories: int, block: int = 1024) -> Optional[int]:
    """The first of ``samples`` whose history spans ``min_categories`` categories, or None."""
    for start in range(0, len(samples), block):
        indices = samples[start:start + block]
        batch = source.gather(split, indices, max_seq_len)
        for row, index in enumerate(indices):
            length = int(batch["hist_len"][row])
            if len(np.unique(item_category[batch["hist_item"][row, :length]])) >= min_categories:
                return int(index)
    return None


def choose_attention_example(source: Any, item_category: np.ndarray, split: str = "test", max_seq_len: int = 100,
                             sample: Optional[int] = None, min_length: int = 6, max_length: int = 16,
                             seed: int = 0, candidates_in_history: int = 3,
                             candidates_elsewhere: int = 2, min_categories: int = 3) -> Dict[str, Any]:
    """A user history and a set of candidates that show how attention picks behaviours.

    The history is that of one sample of ``split``: ``sample``, or the first
    one whose history has ``min_length`` to ``max_length`` items of at least
    ``min_categories`` categories (fewer when none has; on real data the
    first histories can be of one category, which leaves no behaviours for
    different candidates to pick from). The candidates are the sample's own
    candidate item, one new item from each of the history's most frequent
    categories, and items of categories the history does not contain.

    Returns:
      ``{"history": [...], "candidates": [...], "sample": index, "label": 0/1, "user": id}``.

    Raises:
      SampleOutOfRangeError: ``sample`` is not an index of ``split``.
    """
    lengths = source.history_lengths(split, max_seq_len)
    item_category = np.asarray(item_category)
    if sample is None:
        fitting = np.flatnonzero((lengths >= min_length) & (lengths <= max_length))
        sample = _first_varied_history(source, split, fitting, item_category, max_seq_len, min_categories)
        if sample is None:
            sample = int(fitting[0]) if len(fitting) else int(np.argmax(lengths))
    elif not 0 <= sample < len(lengths):  # a negative index would silently count from the end
        raise SampleOutOfRangeError(sample, split, len(lengths))
    batch = source.gather(split, np.array([sample]), max_seq_len)
    length = int(batch["hist_len"][0])
    history = [int(x) for x in batch["hist_item"][0, :length]]
    rng = np.random.default_rng(seed)
    counts = collections.Counter(int(item_category[i]) for i in history)
    chosen = [int(batch["item"][0])]
    taken = set(history) | set(chosen)

    def new_item_of(category: int) -> Optional[int]:
        pool = [int(i) for i in np.flatnonzero(item_category == category) if int(i) not in taken]
        return int(rng.choice(pool)) if pool else None

    for category, _ in counts.most_common():
        if len(chosen) >= 1 + candidates_in_history:
            break
        if category == int(item_category[chosen[0]]):
            continue
        item = new_item_of(category)
        if item is not None:
            chosen.append(item)
            taken.add(item)
    absent = [c for c in rng.permutation(int(item_category.max()) + 1) if int(c) not in counts]
    for category in absent[:candidates_elsewhere]:
        item = new_item_of(int(category))
        if item is not None:
            chosen.append(item)
            taken.add(item)
    return {"history": history, "candidates": chosen, "sample": sample, "label": float(batch["label"][0]),
            "user": int(batch["user"][0])}


def plot_attention_example(predictor, history: Sequence[int], candidates: Sequence[int], path: str,
                           user: int = 0, title: Optional[str] = None, scale: str = "auto") -> str:
    """``plot_attention`` of a ``Predictor``'s weights and scores for one history and its candidates."""
    if not predictor.returns_attention:
        raise ValueError("model %s returns no attention weights" % predictor.metadata.get("model"))
    history = list(history)[-predictor.max_seq_len:]
    logits_C, weights_CxL = predictor.score(history, candidates, user=user)
    probabilities = 1.0 / (1.0 + np.exp(-logits_C.astype(np.float64)))
    categories = predictor.item_category
    return plot_attention(history, [int(categories[i]) for i in history], candidates,
                          [int(categories[i]) for i in candidates], weights_CxL, probabilities, path, title=title,
                          scale=scale)


# ---------------------------------------------------------------------------
# Ablations.


def load_ablation_results(path: str) -> List[Dict[str, Any]]:
    """Rows of an ablation results file (JSON lines, one record per line).

    Two row layouts are understood: flat rows with the configuration
    (``model``, ``attention``, ``activation``, ``regularizer``, ``dataset``,
    ``seed``) and metrics dicts ``validation`` / ``test`` (``gauc``, ``auc``,
    ``logloss``); and the records of ``experiments/ablate.py`` (``key``,
    ``status``, ``phase``, ``cell``, ``seed``, ``flags``, ``validation``,
    ``test``), of which ``summarize_ablation`` keeps the latest successful
    record of each run and, when there are any, only the ``final`` phase.

    Raises:
      ValueError: ``FILE:LINE: ...`` for a line that is not a JSON object.
    """
    rows = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as error:
                raise ValueError("%s:%d: not valid JSON (%s)" % (path, number, error)) from None
            if not isinstance(row, dict):
                raise ValueError("%s:%d: expected a JSON object" % (path, number))
            rows.append(row)
    if not rows:
        raise ValueError("%s: no results" % path)
    return rows


def _reportable(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The rows to chart: the last successful record per run key, the final phase when there is one."""
    latest: Dict[Any, Dict[str, Any]] = collections.OrderedDict()
    for index, row in enumerate(rows):
        if row.get("status", "ok") != "ok":
            continue
        latest[row.get("key", ("row", index))] = row
    kept = list(latest.values())
    if any(row.get("phase") == "final" for row in kept):
        kept = [row for row in kept if row.get("phase") == "final"]
    return kept


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
        "regularizer": ("mba %g" % flags["mba_lambda"]) if flags.get("mba_lambda") else
                       ("l2 %g" % flags["l2"]) if flags.get("l2") else None,
    }
    return dataset, {f: _field_text(row[f] if f in row else fallback[f]) for f in ABLATION_FIELDS}


def summarize_ablation(rows: Sequence[Dict[str, Any]], metric: str = "gauc",
                       split: str = "test") -> Dict[str, List[Dict[str, Any]]]:
    """Mean and standard deviation over seeds of ``split``'s ``metric``, per configuration and dataset.

    Returns:
      ``{dataset: [{"config": {field: value}, "mean", "std", "n", "values"}]}``
      (std with ddof=1; 0 for a single seed), rows without the metric left out.
    """
    groups: Dict[Tuple[str, Tuple[Tuple[str, str], ...]], List[float]] = collections.OrderedDict()
    for row in _reportable(rows):
        value = (row.get(split) or {}).get(metric)
        if value is None or not math.isfinite(float(value)):
            continue
        dataset, config = _configuration(row)
        groups.setdefault((dataset, tuple(config.items())), []).append(float(value))
    out: Dict[str, List[Dict[str, Any]]] = collections.OrderedDict()
    for (dataset, config), values in groups.items():
        array = np.asarray(values)
        out.setdefault(dataset, []).append({
            "config": dict(config),
            "mean": float(array.mean()),
            "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
            "n": len(array),
            "values": values,
        })
    return out


def _field_text(value: Any) -> str:
    if value is None or value is False:
        return "none"
    if isinstance(value, (list, tuple)):
        return "-".join(str(v) for v in value)
    return str(value)


def plot_ablation(rows: Sequence[Dict[str, Any]], path: str, metric: str = "gauc", split: str = "test") -> str:
    """Bars of the mean ``split`` ``metric`` ± std over seeds per configuration, one panel per dataset.

    Bars are sorted (best on top, highlighted); the axis is zoomed to the
    values, since configurations differ in the third decimal. Fields equal in
    every row go to the title, the others label the bars.
    """
    summary = summarize_ablation(rows, metric, split)
    if not summary:
        raise ValueError("no row has %s.%s" % (split, metric))
    entries = [e for group in summary.values() for e in group]
    fields = list(entries[0]["config"])
    varying = [f for f in fields if len({e["config"].get(f) for e in entries}) > 1] or fields[:1]
    constant = ["%s %s" % (f, entries[0]["config"][f]) for f in fields if f not in varying]
    lower_is_better = metric == "logloss"
    tallest = max(len(group) for group in summary.values())
    fig = Figure(figsize=(9.5, 1.3 + 0.5 * tallest * len(summary)))
    axes = fig.subplots(len(summary), 1, squeeze=False)[:, 0]
    for ax, (dataset, group) in zip(axes, summary.items()):
        group = sorted(group, key=lambda e: e["mean"], reverse=lower_is_better)
        means = np.array([e["mean"] for e in group])
        stds = np.array([e["std"] for e in group])
        best = int(np.argmin(means) if lower_is_better else np.argmax(means))
        colors = ["#d62728" if i == best else "#7f9fbf" for i in range(len(group))]
        ax.barh(range(len(group)), means, xerr=stds, color=colors, height=0.65,
                error_kw={"ecolor": "#333333", "capsize": 4, "linewidth": 1.2})
        ax.set_yticks(range(len(group)))
        ax.set_yticklabels([" · ".join(e["config"][f] for f in varying) for e in group], fontsize=9)
        low = float(np.min(means - stds))
        high = float(np.max(means + stds))
        pad = max((high - low) * 0.12, 0.001)
        ax.set_xlim(low - pad, high + pad * 3.0)
        for i, e in enumerate(group):
            ax.text(e["mean"] + e["std"] + pad * 0.2, i, "%.4f ± %.4f  (n=%d)" % (e["mean"], e["std"], e["n"]),
                    va="center", fontsize=8)
        ax.set_title(dataset or "results", fontsize=10, loc="left")
        ax.set_xlabel("%s %s (mean ± std over seeds)" % (split, metric.upper()))
        _style(ax)
        ax.grid(False, axis="y")
    title = "Ablation: %s %s by %s" % (split, metric.upper(), " · ".join(varying))
    if constant:
        title += "\n(" + ", ".join(constant) + ")"
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------
# Everything for one run.


def write_run_figures(run_dir: str, out_dir: Optional[str] = None, attention_sample: Optional[int] = None,
                      attention_scale: str = "auto") -> List[str]:
    """Training curves and (for attention models) the attention figure of a run, in ``out_dir``.

    Defaults to ``<run_dir>/plots``. The attention figure needs the run's
    ``best`` checkpoint and its data; it is skipped with no error when they
    are missing or the model has no attention.
    """
    out_dir = out_dir or os.path.join(run_dir, "plots")
    written = [plot_training_curves([run_dir], os.path.join(out_dir, "training_curves.png"))]
    path = write_attention_figure(run_dir, os.path.join(out_dir, "attention.png"), sample=attention_sample,
                                  scale=attention_scale)
    if path:
        written.append(path)
    return written


def write_attention_figure(run_dir: str, path: str, sample: Optional[int] = None, split: str = "test",
                           scale: str = "auto") -> Optional[str]:
    """The attention figure of a run's best checkpoint on one sample of its data; None when not possible.

    Raises:
      SampleOutOfRangeError: ``sample`` is not an index of the split shown.
    """
    from absl import logging

    from din_jax.checkpoint import CheckpointError
    from din_jax.config import TrainConfig
    from din_jax.inference import Predictor
    from din_jax.train.setup import load_source

    try:
        predictor = Predictor.from_checkpoint(run_dir)
    except CheckpointError as error:
        logging.warning("no attention figure: %s", error)
        return None
    if not predictor.returns_attention:
        logging.info("no attention figure: model %s has no attention weights", predictor.metadata.get("model"))
        return None
    summary_path = os.path.join(run_dir, "summary.json")
    flags: Dict[str, Any] = {}
    if os.path.isfile(summary_path):
        with open(summary_path) as handle:
            flags = json.load(handle).get("flags", {})
    known = set(TrainConfig.__dataclass_fields__)
    config = TrainConfig(**{k: v for k, v in flags.items() if k in known})
    if not flags:
        meta = predictor.metadata
        config = TrainConfig(use_synthetic_data=bool(meta.get("use_synthetic_data")), dataset=meta.get("dataset"),
                             seed=int(meta.get("seed", 0)), max_seq_len=predictor.max_seq_len,
                             synthetic_samples=(1, 1, 200))
    if isinstance(config.synthetic_samples, list):
        config.synthetic_samples = tuple(config.synthetic_samples)
    try:
        source = load_source(config)
    except Exception as error:  # noqa: BLE001 - a figure is never worth failing a run
        logging.warning("no attention figure: cannot load the run's data: %s", error)
        return None
    if split not in source.split_names():
        split = source.split_names()[-1]
    example = choose_attention_example(source, predictor.item_category, split, predictor.max_seq_len, sample=sample)
    title = "Attention of one %s user (%s sample %d) over its history, for %d candidates" % (
        split, split, example["sample"], len(example["candidates"]))
    return plot_attention_example(predictor, example["history"], example["candidates"], path,
                                  user=example["user"], title=title, scale=scale)
