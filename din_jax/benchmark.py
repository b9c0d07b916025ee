"""Throughput benchmark: the real train and predict programs, timed in windows.

``run_benchmark`` measures, for each micro-batch size, what training (or
inference) runs: the pmapped ``train_chunk`` of ``din_jax.train.step`` (device
iterations, donated state, sparse embedding updates, length buckets) fed by
the same host pipeline as ``Trainer`` (chunks gathered by a background thread,
metrics fetched one call late). Method:

1. A pool of samples (synthetic with a chosen history-length distribution, or
   a split of a dataset directory) is planned into windows: each window is one
   pass over the pool in a fresh shuffled order, cut into calls exactly as an
   epoch is (``plan_chunks`` / ``plan_bucketed_chunks``), so a window holds
   every length bucket in its true proportion.
2. Warm-up: one call of every program shape any window uses (this is where
   XLA compiles); its wall time is reported as ``compile_s``, not timed.
3. The windows are run back to back; the device is synchronised at each
   window's end only. ``samples_per_s`` is the median over the windows,
   with the minimum, maximum and relative spread.

Also recorded: milliseconds per micro-batch, the process's peak resident
memory (``resource.getrusage``) and the device's peak memory where the
backend reports it, the analytic FLOPs per sample, and the platform, device,
CPU and library versions.

Shape letters: R replicas, K device iterations, B micro-batch, T history.
"""

import csv
import dataclasses
import json
import os
import platform
import resource
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np

from din_jax.config import TrainConfig
from din_jax.data.batching import gather_chunk, normalize_buckets, plan_bucketed_chunks, plan_chunks, prefetch
from din_jax.data.dataset import load_dataset
from din_jax.data.synthetic import make_synthetic_dataset
from din_jax.train.setup import create_programs, vocabulary
from din_jax.train.step import replicate, resolve_devices

MODES = ("train", "infer")
RESULT_FILES = {"train": "results_train.csv", "infer": "results_infer.csv"}

# The Amazon Electronics vocabulary (the DIN paper's data).
ELECTRONICS_VOCABULARY = {"users": 192403, "items": 63001, "categories": 801}

# The configuration the throughput targets are stated for (docs/PERFORMANCE.md).
BENCHMARK_MODEL_CONFIG = {
    "item_dim": 32, "category_dim": 32, "user_dim": 32, "use_item_bias": True,
    "attention": "din", "attention_hidden": (80, 40), "attention_activation": "sigmoid",
    "attention_normalization": "none", "mlp_hidden": (200, 80), "activation": "prelu",
}

CSV_COLUMNS = (
    "mode", "micro_batch_size", "samples_per_s", "samples_per_s_min", "samples_per_s_max", "spread_pct",
    "ms_per_micro_batch", "cpu_us_per_sample", "windows", "samples_per_window", "replicas", "device_iterations", "global_batch",
    "compile_s", "programs", "peak_rss_mb", "device_peak_mb", "mean_history_length", "mean_padded_length",
    "flops_per_sample", "gflops_per_s", "lengths", "length_buckets", "embedding_updates", "optimizer",
    "data_type", "positions_per_pass", "prefetch", "model", "model_config", "platform", "device_kind", "devices",
    "cpu_model", "cpu_count", "python", "jax", "jaxlib", "flax", "optax", "numpy", "load_before", "load_after",
    "date",
)


@dataclasses.dataclass
class BenchmarkConfig:
    """What to measure.

    Attributes:
      mode: ``train`` or ``infer``.
      micro_batch_sizes: one row per size (samples per device per micro-batch).
      device_iterations: micro-batches per host call; 0 picks about 2,048
        samples per call (at least 1 micro-batch).
      replicas: devices (0: every local device).
      model, model_config: the model; the vocabulary is ``vocabulary``.
      optimizer, learning_rate, embedding_updates: training only.
      data_type: compute dtype (``float32``, ``float16``, ``bfloat16``).
      lengths: history-length spec of the synthetic data (``uniform:1:100``,
        ``full:100``, ``electronics``); ignored with ``dataset``.
      dataset, split: a dataset directory and the split to use instead.
      samples: size of the synthetic pool (one window is one pass over it);
        0 picks a size that makes every window at least 16 calls.
      max_seq_len, length_buckets: as ``TrainConfig``.
      windows: timed windows (the median is reported).
      positions_per_pass: history positions (rows x T) computed per pass
        inside a micro-batch (0: the whole micro-batch at once); training:
        sparse updates only.
      prefetch: chunks prepared ahead by the background thread.
      seed: data, order and initialisation.
    """

    mode: str = "train"
    micro_batch_sizes: Tuple[int, ...] = (32,)
    device_iterations: int = 0
    replicas: int = 1
    model: str = "din"
    model_config: Dict[str, Any] = dataclasses.field(default_factory=lambda: dict(BENCHMARK_MODEL_CONFIG))
    vocabulary: Dict[str, int] = dataclasses.field(default_factory=lambda: dict(ELECTRONICS_VOCABULARY))
    optimizer: str = "sgd"
    learning_rate: float = 0.1
    embedding_updates: str = "sparse"
    data_type: str = "float32"
    lengths: str = "uniform:1:100"
    dataset: Optional[str] = None
    split: Optional[str] = None
    samples: int = 0
    max_seq_len: int = 100
    length_buckets: Tuple[int, ...] = ()
    windows: int = 5
    positions_per_pass: int = 0
    prefetch: int = 2
    seed: int = 0


# ----------------------------------------------------------------------------
# Environment, memory, statistics


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str:
    try:
        return str(__import__(module).__version__)
    except Exception:  # noqa: BLE001 - a missing library is reported, not fatal
        return "n/a"


def load_average() -> Optional[float]:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def environment_info(devices: Optional[List[Any]] = None) -> Dict[str, Any]:
    """Platform, device, CPU and library versions."""
    devices = devices or jax.local_devices()
    jaxlib_version = _version("jaxlib")
    return {
        "platform": devices[0].platform,
        "device_kind": str(getattr(devices[0], "device_kind", devices[0].platform)),
        "devices": len(devices),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib_version,
        "flax": _version("flax"),
        "optax": _version("optax"),
        "numpy": np.__version__,
    }


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def device_peak_mb(devices: Sequence[Any]) -> Optional[float]:
    """The largest ``peak_bytes_in_use`` of the devices, in MiB, where the backend reports it (GPU)."""
    peaks = []
    for device in devices:
        try:
            stats = device.memory_stats()
        except Exception:  # noqa: BLE001 - CPU and older backends have none
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(stats["peak_bytes_in_use"] / (1024.0 * 1024.0))
    return max(peaks) if peaks else None


def _describe(value: Any) -> Any:
    """JSON for model fields: tuples as lists, factories by name and bound arguments."""
    if isinstance(value, (tuple, list)):
        return list(value)
    keywords = getattr(value, "keywords", None)
    func = getattr(value, "func", value)
    name = getattr(func, "__name__", type(func).__name__)
    return "%s(%s)" % (name, ", ".join("%s=%r" % item for item in sorted((keywords or {}).items())))


def summarize(rates: Sequence[float]) -> Dict[str, float]:
    """Median, minimum, maximum and spread (``100 * (max - min) / median``) of per-window rates."""
    values = np.asarray(rates, dtype=np.float64)
    median = float(np.median(values))
    return {"median": median, "min": float(values.min()), "max": float(values.max()),
            "spread_pct": float(100.0 * (values.max() - values.min()) / median) if median > 0 else float("nan")}


# ----------------------------------------------------------------------------
# FLOPs


def _dense_flops(widths: Sequence[int]) -> int:
    return sum(2 * a * b for a, b in zip(widths, widths[1:]))


def din_flops_per_sample(model_config: Dict[str, Any], history_length: float, form: str = "split",
                         train: bool = False) -> float:
    """FLOPs (2 per multiply-add) of DIN's matrix products for one sample.

    Counts the matrix products only (attention MLP per history position,
    the weighted sum, the prediction MLP); element-wise work, gathers and the
    optimiser are left out. Training is counted as 3x the forward pass (the
    backward pass computes two products per forward product).

    Args:
      model_config: DIN fields (``item_dim``, ``category_dim``, ``user_dim``,
        ``attention_hidden``, ``mlp_hidden``, ``use_history_sum``).
      history_length: positions computed per sample (the padded length).
      form: the first attention layer as evaluated: ``concat`` (``8 D H``
        per position, the textbook form), ``split`` (``4 D H`` per position +
        ``2 D H`` per sample) or ``fold`` (``2 D H`` per position + ``3 D H``
        per sample, the per-sample matrix included).
    """
    d = int(model_config.get("item_dim", 64)) + int(model_config.get("category_dim", 64))
    hidden = [int(h) for h in model_config.get("attention_hidden", (80, 40))]
    first = hidden[0]
    per_position = {"concat": 8 * d * first, "split": 4 * d * first + d, "fold": 2 * d * first}[form]
    per_sample = {"concat": 0, "split": 2 * d * first, "fold": 3 * d * first}[form]
    per_position += _dense_flops(hidden + [1]) + 2 * d  # later layers, score, weighted sum
    mlp_in = 3 * d + int(model_config.get("user_dim", 0))
    if model_config.get("use_history_sum", False):
        mlp_in += 2 * d
        per_position += 2 * d
    per_sample += _dense_flops([mlp_in] + [int(h) for h in model_config.get("mlp_hidden", (80, 40))] + [1])
    forward = per_position * float(history_length) + per_sample
    return 3.0 * forward if train else forward


def attention_form(model_config: Dict[str, Any], history_length: int) -> str:
    """The first-layer form DIN evaluates at a history length (``DinAttention``'s rule)."""
    attention = model_config.get("attention", "din")
    if not model_config.get("split_attention", True):
        return "concat"
    keywords = getattr(attention, "keywords", {}) or {}
    fold = keywords.get("fold_query", True)
    return "fold" if fold and history_length >= keywords.get("fold_min_length", 32) else "split"


def measure_matmul_gflops(m: int = 4096, k: int = 128, n: int = 80, repeats: int = 20, batch: int = 0) -> float:
    """The backend's float32 matrix-multiply rate (GFLOP/s) on a jitted ``[m, k] @ [k, n]``.

    With ``batch`` > 0, a batched product ``[batch, m, k] @ [batch, k, n]``
    (the folded attention's shape).
    """
    lead = (batch,) if batch else ()
    a = jax.numpy.ones(lead + (m, k), jax.numpy.float32)
    b = jax.numpy.ones(lead + (k, n), jax.numpy.float32)
    product = jax.jit(lambda x, y: x @ y)
    product(a, b).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        out = product(a, b)
    out.block_until_ready()
    return 2.0 * max(batch, 1) * m * k * n * repeats / (time.perf_counter() - start) / 1e9


# Shapes of DIN's products at micro-batch 4096 (256 rows per pass, 64 positions):
# the attention's first layer per position (split form), its folded per-sample
# form, the second layer, the prediction MLP's first layer; and a large square one.
MATMUL_SHAPES = (
    ("attention layer 1 (split): [16384,64]@[64,80]", dict(m=16384, k=64, n=80)),
    ("attention layer 1 (fold): [256x64,64]@[256x64,80]", dict(m=64, k=64, n=80, batch=256)),
    ("attention layer 2: [16384,80]@[80,40]", dict(m=16384, k=80, n=40)),
    ("MLP layer 1: [4096,224]@[224,200]", dict(m=4096, k=224, n=200)),
    ("square: [2048,2048]@[2048,2048]", dict(m=2048, k=2048, n=2048, repeats=3)),
)


def measure_matmul_rates() -> List[Tuple[str, float]]:
    """``(shape, GFLOP/s)`` for ``MATMUL_SHAPES``."""
    return [(name, measure_matmul_gflops(**shape)) for name, shape in MATMUL_SHAPES]


# ----------------------------------------------------------------------------
# Data and plans


def make_source(config: BenchmarkConfig, num_samples: int):
    """The data pool: a dataset directory, or synthetic data with ``config.lengths``."""
    if config.dataset:
        return load_dataset(config.dataset)
    vocab = config.vocabulary
    train, test = (num_samples, 0) if config.mode == "train" else (0, num_samples)
    return make_synthetic_dataset(train, 0, test, max_seq_len=config.max_seq_len, num_users=vocab["users"],
                                  num_items=vocab["items"], num_categories=vocab["categories"], seed=config.seed,
                                  length_spec=config.lengths)


def source_split(config: BenchmarkConfig) -> str:
    return config.split or ("train" if config.mode == "train" else "test")


def resolve_device_iterations(config: BenchmarkConfig, micro_batch_size: int, replicas: int) -> int:
    if config.device_iterations > 0:
        return config.device_iterations
    return max(1, 2048 // (micro_batch_size * replicas))


def default_pool_size(config: BenchmarkConfig, global_batch: int, device_iterations: int) -> int:
    """Enough samples that a window holds at least 16 calls per bucket, and at least 65,536."""
    buckets = len(normalize_buckets(config.length_buckets, config.max_seq_len))
    return max(65536, 16 * buckets * device_iterations * global_batch)


def plan_window(config: BenchmarkConfig, lengths: np.ndarray, window: int, replicas: int, device_iterations: int,
                micro_batch_size: int):
    """The calls of one window: a pass over the pool in the window's own shuffled order."""
    order = np.random.default_rng([config.seed, window]).permutation(len(lengths))
    buckets = normalize_buckets(config.length_buckets, config.max_seq_len)
    if len(buckets) > 1:
        return plan_bucketed_chunks(order, lengths, buckets, replicas, device_iterations, micro_batch_size,
                                    drop_remainder=True, shuffle_seed=[config.seed, window])
    plan = plan_chunks(order, replicas, device_iterations, micro_batch_size, drop_remainder=True)
    return plan._replace(seq_lens=[config.max_seq_len] * len(plan.calls))


# ----------------------------------------------------------------------------
# The measurement


def _train_config(config: BenchmarkConfig, micro_batch_size: int, device_iterations: int):
    return TrainConfig(model=config.model, model_config=dict(config.model_config), use_synthetic_data=True,
                       max_seq_len=config.max_seq_len, micro_batch_size=micro_batch_size,
                       device_iterations=device_iterations, replicas=config.replicas, optimizer=config.optimizer,
                       learning_rate=config.learning_rate, data_type=config.data_type, seed=config.seed,
                       embedding_updates=config.embedding_updates, positions_per_pass=config.positions_per_pass,
                       length_buckets=tuple(config.length_buckets)).validate()


def _programs(config: BenchmarkConfig, devices: List[Any], train_config, vocab: Dict[str, int]):
    """``call(chunk) -> output``: the mode's program of ``create_programs``, as training runs it, on a fresh state."""
    programs = create_programs(train_config, vocab, devices, devices)
    if config.mode == "train":
        holder = {"state": replicate(programs.state, devices)}

        def call(chunk):
            holder["state"], metrics = programs.p_train(holder["state"], chunk)
            return metrics["loss"]

        return call
    variables = replicate({"params": programs.state.params, "batch_stats": programs.state.batch_stats}, devices)
    return lambda chunk: programs.p_predict(variables, chunk)


def benchmark_micro_batch(config: BenchmarkConfig, micro_batch_size: int, source: Any = None,
                          log: Any = None) -> Dict[str, Any]:
    """One result row: the throughput of ``config.mode`` at one micro-batch size.

    Args:
      source: the data pool (built from ``config`` when None).
      log: optional ``callable(str)`` for progress lines.
    """
    devices = resolve_devices(config.replicas)
    replicas = len(devices)
    device_iterations = resolve_device_iterations(config, micro_batch_size, replicas)
    global_batch = replicas * micro_batch_size
    split = source_split(config)
    if source is None:
        samples = config.samples or default_pool_size(config, global_batch, device_iterations)
        source = make_source(config, samples)
    lengths = source.history_lengths(split, config.max_seq_len)
    if len(lengths) < global_batch * device_iterations:
        raise ValueError("the pool has %d samples, fewer than one call (%d x %d x %d)"
                         % (len(lengths), replicas, device_iterations, micro_batch_size))
    train_config = _train_config(config, micro_batch_size, device_iterations)
    call = _programs(config, devices, train_config, vocabulary(source))
    plans = [plan_window(config, lengths, window, replicas, device_iterations, micro_batch_size)
             for window in range(config.windows)]
    load_before = load_average()

    # Warm-up: compile every program shape the windows use.
    shapes: Dict[Tuple[int, int], np.ndarray] = {}
    for plan in plans:
        for indices, seq_len in zip(plan.calls, plan.seq_lens):
            shapes.setdefault((indices.shape[1], seq_len), indices)
    start = time.perf_counter()
    for (_, seq_len), indices in sorted(shapes.items(), key=lambda item: item[0]):
        jax.block_until_ready(call(gather_chunk(source, split, indices, seq_len)))
    compile_s = time.perf_counter() - start
    if log:
        log("%s micro-batch %d: %d program(s) compiled in %.1f s" % (config.mode, micro_batch_size, len(shapes),
                                                                   compile_s))

    rates, window_seconds, window_steps, window_samples, window_cpu = [], [], [], [], []
    padded, real, flops = 0.0, 0.0, 0.0
    for window, plan in enumerate(plans):
        def chunks(plan=plan):
            for indices, seq_len in zip(plan.calls, plan.seq_lens):
                yield gather_chunk(source, split, indices, seq_len)

        steps = sum(indices.shape[1] for indices in plan.calls)
        count = steps * global_batch
        for indices, seq_len in zip(plan.calls, plan.seq_lens):
            padded += indices.size * seq_len
            real += float(np.sum(lengths[indices]))
            if config.model == "din":
                flops += indices.size * din_flops_per_sample(
                    config.model_config, seq_len, attention_form(config.model_config, seq_len),
                    train=config.mode == "train")
        pending = None
        start, cpu_start = time.perf_counter(), time.process_time()
        for chunk in prefetch(chunks(), config.prefetch):
            out = call(chunk)
            if pending is not None:
                jax.device_get(pending)  # one call late, as the Trainer does
            pending = out
        jax.block_until_ready(pending)
        seconds = time.perf_counter() - start
        window_cpu.append(time.process_time() - cpu_start)
        rates.append(count / seconds)
        window_seconds.append(seconds)
        window_steps.append(steps)
        window_samples.append(count)
        if log:
            log("  window %d: %d samples in %.2f s, %.0f samples/s" % (window + 1, count, seconds, count / seconds))

    stats = summarize(rates)
    median_window = int(np.argsort(rates)[len(rates) // 2])
    mean_padded = padded / sum(window_samples)
    flops = flops / sum(window_samples) if config.model == "din" else float("nan")
    env = environment_info(devices)
    buckets = normalize_buckets(config.length_buckets, config.max_seq_len)
    row = {
        "mode": config.mode,
        "micro_batch_size": micro_batch_size,
        "samples_per_s": round(stats["median"], 1),
        "samples_per_s_min": round(stats["min"], 1),
        "samples_per_s_max": round(stats["max"], 1),
        "spread_pct": round(stats["spread_pct"], 1),
        "ms_per_micro_batch": round(1000.0 * window_seconds[median_window] / window_steps[median_window], 4),
        # Process CPU time (all threads) per sample: less sensitive to other load than the wall clock.
        "cpu_us_per_sample": round(1e6 * window_cpu[median_window] / window_samples[median_window], 2),
        "windows": config.windows,
        "samples_per_window": window_samples[0],
        "replicas": replicas,
        "device_iterations": device_iterations,
        "global_batch": global_batch,
        "compile_s": round(compile_s, 2),
        "programs": len(shapes),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "device_peak_mb": device_peak_mb(devices),
        "mean_history_length": round(real / sum(window_samples), 2),
        "mean_padded_length": round(mean_padded, 2),
        "flops_per_sample": round(flops),
        "gflops_per_s": round(flops * stats["median"] / 1e9, 2),
        "lengths": "dataset:%s/%s" % (config.dataset, split) if config.dataset else config.lengths,
        "length_buckets": ",".join(str(b) for b in buckets),
        "embedding_updates": config.embedding_updates if config.mode == "train" else "",
        "optimizer": config.optimizer if config.mode == "train" else "",
        "data_type": config.data_type,
        "positions_per_pass": config.positions_per_pass,
        "prefetch": config.prefetch,
        "model": config.model,
        "model_config": json.dumps(config.model_config, sort_keys=True, default=_describe),
        "load_before": load_before,
        "load_after": load_average(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    row.update(env)
    return row


def run_benchmark(config: BenchmarkConfig, log: Any = None) -> List[Dict[str, Any]]:
    """One row per micro-batch size (see ``benchmark_micro_batch``).

    A synthetic pool is generated once for the largest size and shared.
    """
    if config.mode not in MODES:
        raise ValueError("mode must be one of %s, got %r" % (list(MODES), config.mode))
    source = None
    if config.dataset or config.samples:
        source = make_source(config, config.samples)
    else:
        replicas = len(resolve_devices(config.replicas))
        sizes = [default_pool_size(config, replicas * b, resolve_device_iterations(config, b, replicas))
                 for b in config.micro_batch_sizes]
        source = make_source(config, max(sizes))
    return [benchmark_micro_batch(config, b, source, log) for b in config.micro_batch_sizes]


def write_results(rows: Sequence[Dict[str, Any]], output_dir: str, mode: str) -> str:
    """Writes ``results_train.csv`` or ``results_infer.csv`` (one row per micro-batch size); returns its path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, RESULT_FILES[mode])
    with open(path + ".tmp", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: ("" if row.get(key) is None else row.get(key)) for key in CSV_COLUMNS})
    os.replace(path + ".tmp", path)
    return path


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    """A plain-text table of the headline columns."""
    header = ("mode", "micro_batch", "samples/s", "min", "max", "spread%", "ms/micro-batch", "compile_s",
              "peak_rss_MB", "padded_T")
    lines = ["  ".join("%14s" % h for h in header)]
    for row in rows:
        values = (row["mode"], row["micro_batch_size"], "%.0f" % row["samples_per_s"],
                  "%.0f" % row["samples_per_s_min"], "%.0f" % row["samples_per_s_max"], "%.1f" % row["spread_pct"],
                  "%.3f" % row["ms_per_micro_batch"], "%.1f" % row["compile_s"], "%.0f" % row["peak_rss_mb"],
                  "%.1f" % row["mean_padded_length"])
        lines.append("  ".join("%14s" % v for v in values))
    env = rows[0] if rows else {}
    if env:
        lines.append("%s (%s x%s), %s, %s cores; jax %s jaxlib %s flax %s optax %s numpy %s python %s" % (
            env["platform"], env["device_kind"], env["devices"], env["cpu_model"], env["cpu_count"], env["jax"],
            env["jaxlib"], env["flax"], env["optax"], env["numpy"], env["python"]))
    return "\n".join(lines)
