"""Figures of runs: training curves, attention over one user's history, the ablation chart.

matplotlib's object API on the Agg canvas (no pyplot, no global backend): it draws without a display and leaves
other matplotlib users in the process alone. Every function writes one PNG and returns its path.
"""

import collections
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from absl import logging
from matplotlib import colors as mcolors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from din_jax.ablation.report import Runs, summarize
from din_jax.checkpoint import CheckpointError
from din_jax.config import config_from_checkpoint
from din_jax.inference import Predictor, resolve_checkpoint_dir
from din_jax.metrics import LOWER_IS_BETTER
from din_jax.train.observers import TRAIN_LOG_FILE, read_train_log
from din_jax.train.setup import load_source

_DPI = 150
_PALETTE = "#1f77b4 #d62728 #2ca02c #ff7f0e #9467bd #8c564b #e377c2 #17becf".split()
# Categories: tab20, strong colours first, then their light variants.
_CATEGORY_PALETTE = (
    "#1f77b4 #ff7f0e #2ca02c #d62728 #9467bd #8c564b #e377c2 #7f7f7f #bcbd22 #17becf #aec7e8 "
    "#ffbb78 #98df8a #ff9896 #c5b0d5 #c49c94 #f7b6d2 #c7c7c7 #dbdb8d #9edae5"
).split()
_STAR = dict(marker="*", markersize=15, markeredgecolor="black", markeredgewidth=0.7, linestyle="none", zorder=5)
_CENTRED = dict(ha="center", va="center")
_ERROR_BARS = {"ecolor": "#333333", "capsize": 4, "linewidth": 1.2}


def _text_color(color) -> str:
    red, green, blue = mcolors.to_rgb(color)
    return "white" if 0.299 * red + 0.587 * green + 0.114 * blue < 0.55 else "#222222"


def _save(fig: Figure, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path + ".tmp.png", dpi=_DPI, bbox_inches="tight", facecolor="white")
    os.replace(path + ".tmp.png", path)
    return path


def _style(ax) -> None:
    ax.grid(True, color="#e6e6e6", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)


def load_run(run_dir: str) -> Dict[str, Any]:
    """A run's ``{"name", "train": [(step, loss)], "evaluations": [(step, metrics)], "best_step", "test"}``."""
    summary_path, log_path = os.path.join(run_dir, "summary.json"), os.path.join(run_dir, TRAIN_LOG_FILE)
    summary = None
    if os.path.isfile(summary_path):
        with open(summary_path) as handle:
            summary = json.load(handle)
    rows = read_train_log(log_path) if os.path.isfile(log_path) else []
    if summary is None and not rows:
        raise ValueError("%s has neither summary.json nor %s: not a run directory" % (run_dir, TRAIN_LOG_FILE))
    train = [(int(r["step"]), float(r["loss"])) for r in rows if r.get("event") == "train"]
    history = summary.get("history", []) if summary is not None else [r for r in rows if r.get("event") == "evaluation"]
    evaluations = sorted(
        ((int(h["step"]), h["validation"]) for h in history if h.get("validation")), key=lambda e: e[0]
    )
    name, summary = os.path.basename(os.path.normpath(run_dir)), summary or {}
    best_step, test = summary.get("best_step"), summary.get("test")
    return {"name": name, "train": sorted(train), "evaluations": evaluations, "best_step": best_step, "test": test}


def _smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard-style exponential moving average, debiased at the start."""
    out = np.empty_like(values, dtype=np.float64)
    average, correction = 0.0, 0.0
    for i, value in enumerate(values):
        average = weight * average + (1 - weight) * value
        correction = weight * correction + (1 - weight)
        out[i] = average / correction
    return out


def plot_training_curves(
    run_dirs: Sequence[str], path: str, labels: Optional[Sequence[str]] = None, metric: str = "gauc"
) -> str:
    """Runs' training loss (and its moving average) and validation ``metric`` by step; the best step starred."""
    runs = [load_run(d) for d in run_dirs]
    labels = list(labels) if labels else [run["name"] for run in runs]
    if len(labels) != len(runs):
        raise ValueError("%d labels for %d runs" % (len(labels), len(runs)))
    fig = Figure(figsize=(11.5, 4.2))
    loss_ax, metric_ax = fig.subplots(1, 2)
    for index, (run, label) in enumerate(zip(runs, labels)):
        color = _PALETTE[index % len(_PALETTE)]
        if run["train"]:
            steps, losses = np.array(run["train"], dtype=np.float64).T
            steps, losses = steps[np.isfinite(losses)], losses[np.isfinite(losses)]
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
                metric_ax.plot([run["best_step"]], [best], color=color, **_STAR)
    steps = "step (micro-batches)"
    loss_ax.set(
        title="Training loss (per host call; line: moving average)", xlabel=steps, ylabel="sigmoid cross-entropy"
    )
    metric_ax.set(title="Validation %s (star: the step selected)" % metric.upper(), xlabel=steps, ylabel=metric.upper())
    for ax in (loss_ax, metric_ax):
        _style(ax)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(frameon=False, fontsize=9, loc="best")
    fig.tight_layout()
    return _save(fig, path)


ATTENTION_SCALES = ("auto", "global", "rows")
# Rows spread over less than this share of the whole range get one flat colour each on a common scale.
_ROW_SPREAD_SHARE = 0.25


def attention_colour_scale(weights_CxL: np.ndarray, scale: str = "auto") -> Dict[str, Any]:
    """How the heat map colours its cells: ``{"scale", "values", "vmin", "vmax", "vcenter", "cmap"}``.

    ``global``: one scale, diverging around 0 for weights of both signs, else the weights' own range (deepening with
    the magnitude). ``rows``: each row's magnitudes from its smallest (0) to its largest (1). ``auto``: ``rows``
    when a typical row spans under a quarter of the whole range.
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
        return dict(scale="global", values=weights_CxL, vmin=low, vmax=high, vcenter=0.0, cmap="RdBu_r")
    if high == low:  # one value: any non-empty range draws it in the middle colour
        pad = max(abs(high) * 1e-6, 1e-9)
        low, high = low - pad, high + pad
    cmap = "Reds" if high > 0.0 else "Blues_r"  # the diverging map's halves: hue keeps meaning the sign
    return dict(scale="global", values=weights_CxL, vmin=low, vmax=high, vcenter=None, cmap=cmap)


def annotation_decimals(weights_CxL: np.ndarray) -> int:
    """Decimals that tell a row's weights apart: two, up to four when a typical row spans less than 0.1."""
    weights_CxL = np.asarray(weights_CxL, dtype=np.float64)
    spreads = weights_CxL.max(axis=1) - weights_CxL.min(axis=1) if weights_CxL.size else np.zeros(0)
    spreads = spreads[spreads > 0]
    if not len(spreads):
        return 2
    return int(min(4, max(2, math.ceil(-math.log10(float(np.median(spreads)))) + 1)))


def plot_attention(
    history_items: Sequence[int],
    history_categories: Sequence[int],
    candidate_items: Sequence[int],
    candidate_categories: Sequence[int],
    weights_CxL: np.ndarray,
    probabilities_C: Sequence[float],
    path: str,
    title: Optional[str] = None,
    category_names: Optional[Dict[int, str]] = None,
    scale: str = "auto",
) -> str:
    """Heat map of attention weights, history items x candidates (DIN's local activation), same-category cells
    outlined, the candidates' predicted click probabilities beside."""
    weights_CxL = np.asarray(weights_CxL, dtype=np.float64)
    count, length = weights_CxL.shape
    if length == 0:
        raise ValueError("the history is empty: nothing to show")
    names = category_names or {}
    label_of = lambda category: names.get(int(category), "cat %d" % int(category))  # noqa: E731
    fig = Figure(figsize=(min(4.0 + 0.55 * length, 18.0), 1.6 + 0.62 * count))
    grid = fig.add_gridspec(
        2, 3, width_ratios=[max(length, 4), 3.2, 0.25], height_ratios=[0.6, count], wspace=0.06, hspace=0.05
    )
    strip_ax = fig.add_subplot(grid[0, 0])
    heat_ax = fig.add_subplot(grid[1, 0], sharex=strip_ax)
    bar_ax = fig.add_subplot(grid[1, 1], sharey=heat_ax)
    color_ax = fig.add_subplot(grid[:, 2])

    colours = attention_colour_scale(weights_CxL, scale)
    limits = {"vmin": colours["vmin"], "vmax": colours["vmax"]}
    centred = colours["vcenter"] is not None
    norm = mcolors.TwoSlopeNorm(vcenter=colours["vcenter"], **limits) if centred else mcolors.Normalize(**limits)
    image = heat_ax.imshow(colours["values"], aspect="auto", cmap=colours["cmap"], norm=norm, interpolation="nearest")
    decimals = annotation_decimals(weights_CxL)
    text = dict(_CENTRED, fontsize=7 if decimals <= 2 else 6)
    for c in range(count):
        for j in range(length):
            if length <= 30:
                shade = _text_color(image.cmap(image.norm(colours["values"][c, j])))
                heat_ax.text(j, c, "%.*f" % (decimals, weights_CxL[c, j]), color=shade, **text)
            if int(history_categories[j]) == int(candidate_categories[c]):
                heat_ax.add_patch(Rectangle((j - 0.5, c - 0.5), 1, 1, fill=False, edgecolor="#ff7f0e", linewidth=2.2))
    rows = ["item %d · %s" % (int(i), label_of(k)) for i, k in zip(candidate_items, candidate_categories)]
    heat_ax.set_yticks(range(count), rows, fontsize=9)
    heat_ax.set_xticks(range(length), ["%d" % int(i) for i in history_items], rotation=60, fontsize=8)
    heat_ax.set(
        xlabel="history item ids, oldest → newest  (outlined: same category as the candidate)", ylabel="candidate"
    )

    # The categories of the history, as a colour strip with labels.
    distinct = sorted({int(k) for k in history_categories} | {int(k) for k in candidate_categories})
    palette = {k: _CATEGORY_PALETTE[i % len(_CATEGORY_PALETTE)] for i, k in enumerate(distinct)}
    strip = np.array([[mcolors.to_rgb(palette[int(k)]) for k in history_categories]])
    strip_ax.imshow(strip, aspect="auto", interpolation="nearest")
    for j, k in enumerate(history_categories):
        strip_ax.text(
            j, 0, label_of(k).replace("cat ", "c"), fontsize=7, color=_text_color(palette[int(k)]), **_CENTRED
        )
    strip_ax.set_yticks([0], ["category"], fontsize=9)
    strip_ax.tick_params(axis="x", labelbottom=False, bottom=False)
    strip_ax.spines[:].set_visible(False)

    probabilities = np.asarray(probabilities_C, dtype=np.float64)
    bar_ax.barh(range(count), probabilities, color=[palette[int(k)] for k in candidate_categories], alpha=0.85)
    for c, p in enumerate(probabilities):
        bar_ax.text(min(p + 0.02, 0.98), c, "%.3f" % p, va="center", ha="left" if p < 0.8 else "right", fontsize=8)
    bar_ax.set(xlim=(0, 1), xlabel="predicted CTR")
    bar_ax.tick_params(axis="y", labelleft=False, left=False)
    bar_ax.grid(True, axis="x", color="#e6e6e6")
    bar_ax.spines[["top", "right"]].set_visible(False)
    colorbar = fig.colorbar(image, cax=color_ax)
    if colours["scale"] == "rows":
        colorbar.set_ticks([0.0, 0.5, 1.0])
        colorbar.set_ticklabels(["row's smallest", "", "row's largest"])
    elif centred:  # a two-slope norm gets no automatic ticks below zero
        ticks = np.concatenate([np.linspace(colours["vmin"], 0.0, 3), np.linspace(0.0, colours["vmax"], 5)[1:]])
        colorbar.set_ticks(ticks)
        colorbar.set_ticklabels(["%.2f" % t for t in ticks])
    colorbar.set_label("|attention weight| within each row" if colours["scale"] == "rows" else "attention weight")
    fig.suptitle(title or "One user's history, attended by different candidates", fontsize=12, y=0.99)
    return _save(fig, path)


class SampleOutOfRangeError(ValueError):
    """A sample index outside its split; ``sample``, ``split`` and ``size`` say which."""

    def __init__(self, sample: int, split: str, size: int):
        super().__init__("sample %d is not in the %s split, whose samples are 0 to %d" % (sample, split, size - 1))
        self.sample, self.split, self.size = sample, split, size


def _first_varied_history(source, split, samples, item_category, max_seq_len, min_categories, block=1024):
    """The first of ``samples`` whose history spans ``min_categories`` categories, or None."""
    for start in range(0, len(samples), block):
        indices = samples[start : start + block]
        batch = source.gather(split, indices, max_seq_len)
        for row, index in enumerate(indices):
            if len(np.unique(item_category[batch["hist_item"][row, : int(batch["hist_len"][row])]])) >= min_categories:
                return int(index)
    return None


def choose_attention_example(
    source: Any,
    item_category: np.ndarray,
    split: str = "test",
    max_seq_len: int = 100,
    sample: Optional[int] = None,
    min_length: int = 6,
    max_length: int = 16,
    seed: int = 0,
    candidates_in_history: int = 3,
    candidates_elsewhere: int = 2,
    min_categories: int = 3,
) -> Dict[str, Any]:
    """A history and candidates that show attention picking behaviours (``{"history", "candidates", "sample",
    "label", "user"}``): ``sample``'s history, else the first of ``min_length`` to ``max_length`` items of at least
    ``min_categories`` categories; the sample's item, new items of the history's top categories, and of others."""
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
    history = [int(x) for x in batch["hist_item"][0, : int(batch["hist_len"][0])]]
    rng = np.random.default_rng(seed)
    counts = collections.Counter(int(item_category[i]) for i in history)
    chosen = [int(batch["item"][0])]

    def add_items_of(categories: Sequence[int], limit: int) -> None:  # a new item of each category, up to limit
        for category in categories:
            if len(chosen) >= limit:
                break
            taken = set(history) | set(chosen)
            pool = [int(i) for i in np.flatnonzero(item_category == category) if int(i) not in taken]
            if pool:
                chosen.append(int(rng.choice(pool)))

    own = int(item_category[chosen[0]])
    add_items_of([category for category, _ in counts.most_common() if category != own], 1 + candidates_in_history)
    absent = [int(c) for c in rng.permutation(int(item_category.max()) + 1) if int(c) not in counts]
    add_items_of(absent[:candidates_elsewhere], len(chosen) + candidates_elsewhere)
    label, user = float(batch["label"][0]), int(batch["user"][0])
    return {"history": history, "candidates": chosen, "sample": sample, "label": label, "user": user}


def plot_attention_example(
    predictor,
    history: Sequence[int],
    candidates: Sequence[int],
    path: str,
    user: int = 0,
    title: Optional[str] = None,
    scale: str = "auto",
) -> str:
    """``plot_attention`` of a ``Predictor``'s weights and scores for one history and its candidates."""
    if not predictor.returns_attention:
        raise ValueError("model %s returns no attention weights" % predictor.metadata.get("model"))
    history = list(history)[-predictor.max_seq_len :]
    logits_C, weights_CxL = predictor.score(history, candidates, user=user)
    probabilities = 1.0 / (1.0 + np.exp(-logits_C.astype(np.float64)))
    categories = [int(c) for c in predictor.item_category[list(history) + list(candidates)]]
    of_history, of_candidates = categories[: len(history)], categories[len(history) :]
    return plot_attention(
        history, of_history, candidates, of_candidates, weights_CxL, probabilities, path, title=title, scale=scale
    )


def plot_ablation(
    runs: Runs,
    path: str,
    metric: str = "gauc",
    split: str = "test",
    title: Optional[str] = None,
    note: str = "",
) -> str:
    """Bars of mean ``split`` ``metric`` ± std over seeds per configuration (``ablation.summarize(runs)``, the rows of
    the grid's tables), a panel per dataset, sorted with the best on top and highlighted; fields equal in every row
    go to the title; ``note`` (e.g. the code versions) goes under it."""
    summary: Dict[str, List[Dict[str, Any]]] = collections.OrderedDict()
    for row in summarize(runs, None, metric, split):
        if row["n"]:
            summary.setdefault(row["dataset"], []).append(row)
    if not summary:
        raise ValueError("no row has %s.%s" % (split, metric))
    entries = [e for group in summary.values() for e in group]
    fields = list(entries[0]["config"])
    varying = [f for f in fields if len({e["config"].get(f) for e in entries}) > 1] or fields[:1]
    constant = ["%s %s" % (f, entries[0]["config"][f]) for f in fields if f not in varying]
    lower_is_better = metric in LOWER_IS_BETTER
    tallest = max(len(group) for group in summary.values())
    fig = Figure(figsize=(9.5, 1.3 + 0.5 * tallest * len(summary)))
    axes = fig.subplots(len(summary), 1, squeeze=False)[:, 0]
    for ax, (dataset, group) in zip(axes, summary.items()):
        group = sorted(group, key=lambda e: e["mean"], reverse=lower_is_better)
        means, stds = np.array([[e["mean"], e["std"]] for e in group]).T
        best = int(np.argmin(means) if lower_is_better else np.argmax(means))
        colors = ["#d62728" if i == best else "#7f9fbf" for i in range(len(group))]
        ax.barh(range(len(group)), means, xerr=stds, color=colors, height=0.65, error_kw=_ERROR_BARS)
        ax.set_yticks(range(len(group)), [" · ".join(e["config"][f] for f in varying) for e in group], fontsize=9)
        low, high = float(np.min(means - stds)), float(np.max(means + stds))
        pad = max((high - low) * 0.12, 0.001)
        ax.set_xlim(low - pad, high + pad * 3.0)
        for i, e in enumerate(group):
            label = "%.4f ± %.4f  (n=%d)" % (e["mean"], e["std"], e["n"])
            ax.text(e["mean"] + e["std"] + pad * 0.2, i, label, va="center", fontsize=8)
        ax.set_title(dataset or "results", fontsize=10, loc="left")
        ax.set_xlabel("%s %s (mean ± std over seeds)" % (split, metric.upper()))
        _style(ax)
        ax.grid(False, axis="y")
    if not title:
        title = "Ablation: %s %s by %s" % (split, metric.upper(), " · ".join(varying))
        title += "\n(" + ", ".join(constant) + ")" if constant else ""
    fig.suptitle(title + ("\n" + note if note else ""), fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def write_run_figures(
    run_dir: str, out_dir: Optional[str] = None, attention_sample: Optional[int] = None, attention_scale: str = "auto"
) -> List[str]:
    """A run's training curves and, when its best checkpoint and data allow, attention figure (``<run>/plots``)."""
    out_dir = out_dir or os.path.join(run_dir, "plots")
    written = [plot_training_curves([run_dir], os.path.join(out_dir, "training_curves.png"))]
    path = write_attention_figure(
        run_dir, os.path.join(out_dir, "attention.png"), sample=attention_sample, scale=attention_scale
    )
    if path:
        written.append(path)
    return written


def write_attention_figure(
    run_dir: str, path: str, sample: Optional[int] = None, split: str = "test", scale: str = "auto"
) -> Optional[str]:
    """The attention figure of a run's best checkpoint on one sample of its data; None when not possible."""

    try:
        predictor = Predictor.from_checkpoint(resolve_checkpoint_dir(run_dir))
    except CheckpointError as error:
        logging.warning("no attention figure: %s", error)
        return None
    if not predictor.returns_attention:
        logging.info("no attention figure: model %s has no attention weights", predictor.metadata.get("model"))
        return None
    try:  # the run's data: its dataset or synthetic sizes, seed and max_seq_len
        source = load_source(config_from_checkpoint(predictor.metadata))
    except Exception as error:  # noqa: BLE001 - a figure is never worth failing a run
        logging.warning("no attention figure: cannot load the run's data: %s", error)
        return None
    if split not in source.split_names():
        split = source.split_names()[-1]
    example = choose_attention_example(source, predictor.item_category, split, predictor.max_seq_len, sample=sample)
    title = "Attention of one %s user (%s sample %d) over its history, for %d candidates"
    title %= (split, split, example["sample"], len(example["candidates"]))
    return plot_attention_example(
        predictor, example["history"], example["candidates"], path, user=example["user"], title=title, scale=scale
    )
