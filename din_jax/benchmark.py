"""Throughput benchmark: the real train and predict programs, timed in windows (method: docs/PERFORMANCE.md).

``run_benchmark`` times, per micro-batch size, the pmapped programs of ``create_programs`` fed by the Trainer's host
pipeline. Each window is one shuffled pass over a pool of samples, cut into calls as an epoch is; every program shape
is compiled first (not timed), and the median samples/s over the windows is reported.
"""

import csv
import dataclasses
import functools
import json
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np

from din_jax.config import ConfigError, TrainConfig
from din_jax.data.batching import (
    gather_chunk,
    normalize_buckets,
    packed_positions,
    parse_length_buckets,
    plan_bucketed_chunks,
    plan_chunks,
    plan_packed_chunks,
    plan_packed_prediction,
    prefetch,
)
from din_jax.data.dataset import load_dataset
from din_jax.data.synthetic import make_synthetic_dataset, parse_length_spec
from din_jax.layers import ATTENTIONS
from din_jax.machine import device_peak_mb, environment_info, load_average, peak_rss_mb
from din_jax.models import reads_packed_history, wants_history_negatives
from din_jax.train.observers import Heartbeat
from din_jax.train.setup import build_model_for, create_programs, vocabulary
from din_jax.train.step import init_variables, make_p_predict_chunk, replicate, resolve_devices

MODES = ("train", "infer")
RESULT_FILES = {"train": "results_train.csv", "infer": "results_infer.csv"}

ELECTRONICS_VOCABULARY = {"users": 192403, "items": 63001, "categories": 801}

# The configuration the throughput targets are stated for (docs/PERFORMANCE.md).
BENCHMARK_MODEL_CONFIG = dict(item_dim=32, category_dim=32, user_dim=32, use_item_bias=True, attention="din")
BENCHMARK_MODEL_CONFIG.update(attention_hidden=(80, 40), attention_activation="sigmoid", attention_normalization="none")
BENCHMARK_MODEL_CONFIG.update(mlp_hidden=(200, 80), activation="prelu")

CSV_COLUMNS = tuple(
    """mode micro_batch_size samples_per_s samples_per_s_min samples_per_s_max spread_pct ms_per_micro_batch
    cpu_us_per_sample windows samples_per_window replicas device_iterations global_batch compile_s programs
    peak_rss_mb device_peak_mb mean_history_length mean_padded_length flops_per_sample gflops_per_s lengths
    length_buckets batching packed_positions deferred embedding_updates optimizer data_type positions_per_pass prefetch
    model model_config platform
    device_kind devices cpu_model cpu_count python jax jaxlib flax optax numpy load_before load_after date""".split()
)


@dataclasses.dataclass
class BenchmarkConfig:
    """What to measure (the flags of experiments/benchmark.py).

    ``device_iterations`` 0 picks about 2,048 samples per call; ``replicas`` 0 takes every local device; ``lengths``
    (``uniform:1:100``, ``full:100``, ``electronics``) shapes the synthetic pool unless ``dataset`` (and ``split``) is
    given; ``samples`` 0 sizes the pool so that every window holds at least 16 calls per bucket. The training fields
    (``optimizer``, ``embedding_updates``, ...) are ignored when inferring.
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
    batching: str = "packed"
    packed_positions: int = 0
    windows: int = 5
    positions_per_pass: int = 0
    prefetch: int = 2
    seed: int = 0


def _describe(value: Any) -> Any:
    # JSON of model fields: tuples as lists, factories (functools.partial) by name and bound arguments.
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
    spread = float(100.0 * (values.max() - values.min()) / median) if median > 0 else float("nan")
    return {"median": median, "min": float(values.min()), "max": float(values.max()), "spread_pct": spread}


def _dense_flops(widths: Sequence[int]) -> int:
    return sum(2 * a * b for a, b in zip(widths, widths[1:]))


def din_flops_per_sample(model_config: Dict[str, Any], history_length: float, form="split", train=False) -> float:
    """FLOPs (2 per multiply-add) of DIN's matrix products for one sample at a padded history length.

    ``form``: the attention's first layer as evaluated, ``concat``, ``split`` or ``fold`` (``attention_form``); training
    is 3x the forward pass. What is counted: docs/PERFORMANCE.md.
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
    """The backend's float32 rate (GFLOP/s) on a jitted ``[m, k] @ [k, n]`` (``[batch, m, k] @ [batch, k, n]``)."""
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


# DIN's products at micro-batch 4096 (256 rows per pass, 64 positions), and a large square one.
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


def make_source(config: BenchmarkConfig, num_samples: int):
    """The data pool: a dataset directory, or synthetic data with ``config.lengths``."""
    if config.dataset:
        return load_dataset(config.dataset)
    vocab = config.vocabulary
    train, test = (num_samples, 0) if config.mode == "train" else (0, num_samples)
    sizes = dict(num_users=vocab["users"], num_items=vocab["items"], num_categories=vocab["categories"])
    return make_synthetic_dataset(
        train, 0, test, max_seq_len=config.max_seq_len, seed=config.seed, length_spec=config.lengths, **sizes
    )


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


def plan_window(config: BenchmarkConfig, lengths: np.ndarray, window: int, replicas: int, iterations: int, batch: int):
    """The calls of one window: a pass over the pool in the window's own shuffled order."""
    order = np.random.default_rng([config.seed, window]).permutation(len(lengths))
    if config.batching == "packed" and config.mode == "infer":
        plan = plan_packed_prediction(order, lengths, replicas, iterations, batch, config.max_seq_len)
        return plan._replace(seq_lens=[config.max_seq_len] * len(plan.calls))
    if config.batching == "packed":
        positions = config.packed_positions or packed_positions(lengths, batch, config.max_seq_len)
        plan = plan_packed_chunks(order, lengths, replicas, iterations, batch, positions, drop_remainder=True)
        return plan._replace(seq_lens=[config.max_seq_len] * len(plan.calls))
    buckets = normalize_buckets(config.length_buckets, config.max_seq_len)
    if len(buckets) > 1:
        options = dict(drop_remainder=True, shuffle_seed=[config.seed, window])
        return plan_bucketed_chunks(order, lengths, buckets, replicas, iterations, batch, **options)
    plan = plan_chunks(order, replicas, iterations, batch, drop_remainder=True)
    return plan._replace(seq_lens=[config.max_seq_len] * len(plan.calls))


# The benchmark command's own settings (its flags), turned into a BenchmarkConfig by make_config.
COMMAND_SETTINGS = tuple(
    """mode micro_batch_sizes device_iterations replicas optimizer learning_rate embedding_updates data_type
    lengths dataset split samples max_seq_len length_buckets batching packed_positions windows positions_per_pass
    prefetch seed vocabulary fold_query""".split()
)


def make_config(values: Dict[str, Any], model: str, model_config: Dict[str, Any]) -> BenchmarkConfig:
    """A checked BenchmarkConfig from the command's settings (``COMMAND_SETTINGS``); errors name the flag."""
    values, model_config = dict(values), dict(model_config)
    if values.get("batching") == "auto":  # packed where the model reads packed batches
        values["batching"] = "packed" if reads_packed_history(model) else "padded"
    try:
        sizes = tuple(int(x) for x in values.pop("micro_batch_sizes"))
    except ValueError:
        raise ConfigError("--micro_batch_sizes must be integers") from None
    if not sizes or min(sizes) < 1:
        raise ConfigError("--micro_batch_sizes must be one or more integers >= 1")
    try:
        buckets = parse_length_buckets(",".join(values.pop("length_buckets")))
        vocab = [int(x) for x in values.pop("vocabulary")]
    except ValueError as error:
        raise ConfigError("--length_buckets / --vocabulary: %s" % error) from None
    if len(vocab) != 3 or min(vocab) < 2:
        raise ConfigError("--vocabulary must be three integers users,items,categories >= 2")
    for name in ("device_iterations", "replicas", "samples", "prefetch", "positions_per_pass"):
        if values[name] < 0:
            raise ConfigError("--%s must be >= 0, got %d" % (name, values[name]))
    if values["windows"] < 1:
        raise ConfigError("--windows must be >= 1")
    if not values.pop("fold_query") and model_config.get("attention") in ("din", "din_softmax"):
        model_config["attention"] = functools.partial(ATTENTIONS.get(model_config["attention"]), fold_query=False)
    if values["learning_rate"] is None:
        values["learning_rate"] = 0.001 if values["optimizer"] == "adam" else 0.1
    if not values["dataset"]:
        try:
            parse_length_spec(values["lengths"], values["max_seq_len"])
        except ValueError as error:
            raise ConfigError("--lengths: %s" % error) from None
    vocabulary = {"users": vocab[0], "items": vocab[1], "categories": vocab[2]}
    fields = dict(model=model, model_config=model_config, vocabulary=vocabulary, length_buckets=buckets)
    config = BenchmarkConfig(micro_batch_sizes=sizes, **fields, **values)
    for size in sizes:  # the checks a training run makes (--length_buckets, --embedding_updates, model fields)
        _train_config(config, size, max(1, config.device_iterations))
    return config


def _train_config(config: BenchmarkConfig, micro_batch_size: int, device_iterations: int):
    shared = "model max_seq_len replicas optimizer learning_rate data_type seed embedding_updates positions_per_pass"
    shared += " batching packed_positions"
    fields = {name: getattr(config, name) for name in shared.split()}
    fields.update(model_config=dict(config.model_config), length_buckets=tuple(config.length_buckets))
    return TrainConfig(
        use_synthetic_data=True, micro_batch_size=micro_batch_size, device_iterations=device_iterations, **fields
    ).validate()


def _programs(config: BenchmarkConfig, devices: List[Any], train_config, vocab: Dict[str, int]):
    """``call(chunk) -> output`` on a fresh state: training's programs (``create_programs``), or inference's."""
    if config.mode == "train":
        programs = create_programs(train_config, vocab, devices, devices)
        p_train, holder = programs.p_train, {"state": replicate(programs.state, devices)}
        del programs  # the host copy of the state would otherwise live through every window

        def call(chunk):
            holder["state"], metrics = p_train(holder["state"], chunk)
            return metrics["loss"]

        return call
    model = build_model_for(train_config, vocab, axis_name=None)
    variables = replicate(init_variables(model, train_config.seed, train_config.max_seq_len), devices)
    p_predict = make_p_predict_chunk(model, devices, positions_per_pass=train_config.positions_per_pass)
    return lambda chunk: p_predict(variables, chunk)


def benchmark_micro_batch(config: BenchmarkConfig, micro_batch_size: int, source=None, log=None) -> Dict[str, Any]:
    """One result row (``CSV_COLUMNS``) at one micro-batch size; ``source``: the pool (None: from ``config``)."""
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
        call_shape = (replicas, device_iterations, micro_batch_size)
        raise ValueError("the pool has %d samples, fewer than one call (%d x %d x %d)" % ((len(lengths),) + call_shape))
    train_config = _train_config(config, micro_batch_size, device_iterations)
    call = _programs(config, devices, train_config, vocabulary(source))
    negatives = config.mode == "train" and wants_history_negatives(config.model, config.model_config)

    def gather(indices, seq_len, buffer, key=()):  # DIEN's negatives are drawn on the host, as training does
        rng = np.random.default_rng([config.seed] + list(key)) if negatives else None
        return gather_chunk(source, split, indices, seq_len, positions=buffer, negatives_rng=rng)

    windows = range(config.windows)
    plans = [plan_window(config, lengths, w, replicas, device_iterations, micro_batch_size) for w in windows]
    load_before = load_average()

    # Warm-up: compile every program shape the windows use.
    # A program per (device iterations, padded length, packed buffer) shape.
    shapes: Dict[Tuple[int, int, int], np.ndarray] = {}
    for plan in plans:
        for indices, seq_len in zip(plan.calls, plan.seq_lens):
            shapes.setdefault((indices.shape[1], seq_len, plan.positions), indices)
    positions = plans[0].positions  # the same for every window: a function of the pool's lengths
    if log:
        log("%s micro-batch %d: compiling %d program(s)" % (config.mode, micro_batch_size, len(shapes)))
    start = time.perf_counter()
    beat = Heartbeat().start()  # a line every 10 s while compiling
    try:
        for number, ((_, seq_len, buffer), indices) in enumerate(sorted(shapes.items(), key=lambda item: item[0]), 1):
            beat.set(
                "%s micro-batch %d: compiling program %d of %d" % (config.mode, micro_batch_size, number, len(shapes))
            )
            jax.block_until_ready(call(gather(indices, seq_len, buffer)))
    finally:
        beat.stop()
    compile_s = time.perf_counter() - start
    if log:
        compiled = (config.mode, micro_batch_size, len(shapes), compile_s)
        log("%s micro-batch %d: %d program(s) compiled in %.1f s" % compiled)

    train = config.mode == "train"
    rates, window_seconds, window_steps, window_samples, window_cpu = [], [], [], [], []
    padded, real, flops = 0.0, 0.0, 0.0
    # FLOPs are counted for DIN's activation unit only (din_flops_per_sample).
    counted = config.model == "din" and config.model_config.get("attention", "din") in ("din", "din_softmax")
    for window, plan in enumerate(plans):

        def chunks(plan=plan, window=window):
            for number, (indices, seq_len) in enumerate(zip(plan.calls, plan.seq_lens)):
                yield gather(indices, seq_len, plan.positions, [window, number])

        steps = sum(indices.shape[1] for indices in plan.calls)
        count = int(sum(plan.valid))
        for indices, seq_len in zip(plan.calls, plan.seq_lens):
            # Positions computed per sample slot: the buffer's share when packed (no fold), else the padded length.
            per_slot = positions / indices.shape[-1] if positions else seq_len
            padded += indices.size * per_slot
            real += float(np.sum(np.where(indices >= 0, lengths[indices], 0)))
            if counted:
                form = "split" if positions else attention_form(config.model_config, seq_len)
                flops += indices.size * din_flops_per_sample(config.model_config, per_slot, form, train=train)
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
    median = int(np.argsort(rates)[len(rates) // 2])
    total = sum(window_samples)
    flops = flops / total if counted else 0.0  # 0: not counted
    buckets = normalize_buckets(config.length_buckets, config.max_seq_len)
    row = dict(mode=config.mode, micro_batch_size=micro_batch_size, samples_per_s=round(stats["median"], 1))
    row.update(samples_per_s_min=round(stats["min"], 1), samples_per_s_max=round(stats["max"], 1))
    row.update(spread_pct=round(stats["spread_pct"], 1))
    row["ms_per_micro_batch"] = round(1000.0 * window_seconds[median] / window_steps[median], 4)
    # Process CPU time (all threads) per sample: less sensitive to other load than the wall clock.
    row["cpu_us_per_sample"] = round(1e6 * window_cpu[median] / window_samples[median], 2)
    row.update(windows=config.windows, samples_per_window=window_samples[0], replicas=replicas)
    row.update(device_iterations=device_iterations, global_batch=global_batch, compile_s=round(compile_s, 2))
    row.update(programs=len(shapes), peak_rss_mb=round(peak_rss_mb(), 1), device_peak_mb=device_peak_mb(devices))
    row.update(mean_history_length=round(real / total, 2), mean_padded_length=round(padded / total, 2))
    row.update(flops_per_sample=round(flops), gflops_per_s=round(flops * stats["median"] / 1e9, 2))
    row["lengths"] = "dataset:%s/%s" % (config.dataset, split) if config.dataset else config.lengths
    row["length_buckets"] = "" if positions else ",".join(str(b) for b in buckets)
    row.update(batching=config.batching, packed_positions=positions, deferred=sum(plan.deferred for plan in plans))
    row.update(embedding_updates=config.embedding_updates if train else "", optimizer=config.optimizer if train else "")
    row.update(data_type=config.data_type, positions_per_pass=config.positions_per_pass, prefetch=config.prefetch)
    row.update(model=config.model, model_config=json.dumps(config.model_config, sort_keys=True, default=_describe))
    row.update(load_before=load_before, load_after=load_average(), date=time.strftime("%Y-%m-%d %H:%M:%S"))
    row.update(environment_info(devices))
    return row


def run_benchmark(config: BenchmarkConfig, log: Any = None) -> List[Dict[str, Any]]:
    """One row per micro-batch size (``benchmark_micro_batch``); a synthetic pool is built once, for the largest."""
    if config.mode not in MODES:
        raise ValueError("mode must be one of %s, got %r" % (list(MODES), config.mode))
    sizes = config.micro_batch_sizes
    if config.dataset or config.samples:
        source = make_source(config, config.samples)
    else:
        replicas = len(resolve_devices(config.replicas))
        pools = [default_pool_size(config, replicas * b, resolve_device_iterations(config, b, replicas)) for b in sizes]
        source = make_source(config, max(pools))
    return [benchmark_micro_batch(config, b, source, log) for b in sizes]


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
    header = "mode micro_batch samples/s min max spread% ms/micro-batch compile_s peak_rss_MB padded_T".split()
    lines = ["  ".join("%14s" % h for h in header)]
    for row in rows:
        rates = ["%.0f" % row[key] for key in ("samples_per_s", "samples_per_s_min", "samples_per_s_max")]
        values = [row["mode"], row["micro_batch_size"]] + rates + ["%.1f" % row["spread_pct"]]
        values += ["%.3f" % row["ms_per_micro_batch"], "%.1f" % row["compile_s"], "%.0f" % row["peak_rss_mb"]]
        lines.append("  ".join("%14s" % v for v in values + ["%.1f" % row["mean_padded_length"]]))
    if rows:
        env = rows[0]
        machine = tuple(env[k] for k in ("platform", "device_kind", "devices", "cpu_model", "cpu_count"))
        versions = " ".join("%s %s" % (k, env[k]) for k in ("jax", "jaxlib", "flax", "optax", "numpy", "python"))
        lines.append("%s (%s x%s), %s, %s cores; " % machine + versions)
    return "\n".join(lines)
