"""Flags shared by the entry points, and their translation into a TrainConfig.

Names and defaults follow the options Graphcore's DIN scripts documented
(``--max-seq-len 100``, ``--micro-batch-size 32``, ...); every flag also
answers to its hyphenated spelling. A ``--preset`` supplies values for the
flags not given on the command line; a flag given explicitly always wins.
"""

import importlib
import importlib.util
import logging
import os
import sys
import traceback
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence

from absl import flags

# The experiments are run as scripts; make the library importable from a
# checkout without installation.
# flax 0.6.0 (the IPU stack) warns about a jax API rename at import; it is
# not the user's concern and would precede our one-line error messages.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"flax\.struct")

# The IPU library reads JAX_IPU_USE_MODEL when jax starts, which the imports
# below already do: so --use_ipu_model is honoured from the command line here.
if {"--use_ipu_model", "--use-ipu-model", "--use_ipu_model=true", "--use-ipu-model=true"} & set(sys.argv[1:]):
    os.environ.setdefault("JAX_IPU_USE_MODEL", "true")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from din_jax.config import (  # noqa: E402
    ALIASES,
    BATCHINGS,
    DATA_TYPES,
    EMBEDDING_UPDATES,
    LR_SCHEDULES,
    MODEL_FLAG_DEFAULTS,
    OPTIMIZERS,
    PRESETS,
    SELECT_METRICS,
    TRAIN_FLAGS,
    ConfigError,
    TrainConfig,
    resolve_config,
)
from din_jax.layers import NORMALIZATIONS  # noqa: E402
from din_jax.models.bst import BST_OUTPUTS  # noqa: E402
from din_jax.models.gru import EVOLUTIONS  # noqa: E402
from din_jax.models.pnn import PRODUCTS  # noqa: E402

FLAGS = flags.FLAGS
DEFAULTS = MODEL_FLAG_DEFAULTS  # the model flags' defaults live in the library, with their merging rules

# jax logs at INFO that it found no TPU library; absl shows INFO by default.
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)

_ALIASED: List[str] = []


def _alias(name: str) -> None:
    _ALIASED.append(name)


def define_model_flags() -> None:
    """Flags that pick and size the model."""
    flags.DEFINE_string("preset", None, "Named configuration applied before the flags: %s." % sorted(PRESETS))
    flags.DEFINE_string("model", DEFAULTS["model"], "Model name in the registry (din_jax.models.MODELS).")
    flags.DEFINE_integer(
        "attention_size",
        DEFAULTS["attention_size"],
        "Width of an item vector (item ⊕ category embeddings), split evenly between the two: "
        "Graphcore's 36 = 18 + 18. --item_dim/--category_dim override the split. Not the attention "
        "MLP's size (that is --attention_hidden).",
    )
    flags.DEFINE_integer("item_dim", DEFAULTS["item_dim"], "Item embedding width (default: attention_size / 2).")
    flags.DEFINE_integer(
        "category_dim", DEFAULTS["category_dim"], "Category embedding width (default: attention_size / 2)."
    )
    flags.DEFINE_integer("user_dim", DEFAULTS["user_dim"], "User embedding width; 0 for none.")
    flags.DEFINE_bool(
        "item_bias", DEFAULTS["item_bias"], "Add a learnt per-item bias to the logit (the authors' code)."
    )
    flags.DEFINE_bool(
        "history_sum", DEFAULTS["history_sum"], "Also feed the sum-pooled history to the MLP (DIEN/Graphcore variant)."
    )
    flags.DEFINE_string(
        "attention",
        DEFAULTS["attention"],
        "History pooling by name: din, din_softmax, dot, mha (multi-head target attention), mean, sum, or registered.",
    )
    flags.DEFINE_enum(
        "attention_normalization",
        DEFAULTS["attention_normalization"],
        list(NORMALIZATIONS),
        "DIN attention weights: none (the paper) or softmax of score/sqrt(D) (the authors' code).",
    )
    flags.DEFINE_list(
        "attention_hidden", list(map(str, DEFAULTS["attention_hidden"])), "Hidden widths of the DIN attention MLP."
    )
    flags.DEFINE_string("attention_activation", DEFAULTS["attention_activation"], "Activation of the attention MLP.")
    flags.DEFINE_bool(
        "split_attention",
        DEFAULTS["split_attention"],
        "Evaluate the attention's first layer in the cheaper split form.",
    )
    flags.DEFINE_string(
        "activation", DEFAULTS["activation"], "Activation of the prediction MLP: sigmoid, relu, prelu, dice, ..."
    )
    flags.DEFINE_list("mlp_hidden", list(map(str, DEFAULTS["mlp_hidden"])), "Hidden widths of the prediction MLP.")
    flags.DEFINE_float("dropout", DEFAULTS["dropout"], "Dropout rate after each hidden layer of the prediction MLP.")
    flags.DEFINE_string(
        "pooling",
        DEFAULTS["pooling"],
        "History pooling of base, wide_deep, pnn, deepfm (mean or sum; any "
        "name in the attention registry) and the history-bag normalisation of lr (mean or sum).",
    )
    flags.DEFINE_enum(
        "pnn_product",
        DEFAULTS["pnn_product"],
        list(PRODUCTS),
        "PNN's product layer: inner products of the field vectors, the element-wise product of "
        "history and candidate (the authors' code), or both.",
    )
    flags.DEFINE_integer(
        "wide_buckets", DEFAULTS["wide_buckets"], "Rows of each cross-feature table of wide_deep (hashed beyond)."
    )
    flags.DEFINE_integer(
        "attention_heads",
        DEFAULTS["attention_heads"],
        "Heads of multi-head attention: --attention mha (the candidate over the history) and bst's self-attention; "
        "must divide the item vector's width.",
    )
    flags.DEFINE_enum(
        "evolution",
        DEFAULTS["evolution"],
        list(EVOLUTIONS),
        "dien's interest evolution: augru (attention scales the update gate, the paper's), aigru (scales the "
        "input) or agru (replaces the update gate).",
    )
    flags.DEFINE_float(
        "aux_loss_weight",
        DEFAULTS["aux_loss_weight"],
        "Weight of dien's auxiliary loss (each GRU state tells the next behaviour from a sampled negative; the "
        "paper: 1; 0: off).",
    )
    flags.DEFINE_integer("transformer_blocks", DEFAULTS["transformer_blocks"], "Transformer blocks of bst.")
    flags.DEFINE_enum(
        "bst_output",
        DEFAULTS["bst_output"],
        list(BST_OUTPUTS),
        "What of bst's transformer output enters the MLP: the candidate's position (target) or the mean of the "
        "valid positions (mean).",
    )
    flags.DEFINE_bool(
        "causal_attention",
        DEFAULTS["causal_attention"],
        "bst: each position attends only to itself and earlier behaviours (the candidate, last, sees all).",
    )
    flags.DEFINE_multi_string(
        "import_module",
        [],
        "A Python module name or .py file imported before anything is "
        "built, to register custom attentions, activations or models (repeatable).",
    )
    for name in (
        "attention_size",
        "item_dim",
        "category_dim",
        "user_dim",
        "item_bias",
        "history_sum",
        "attention_normalization",
        "attention_hidden",
        "attention_activation",
        "split_attention",
        "mlp_hidden",
    ):
        _alias(name)


def define_run_flags(micro_batch_size: int, epochs: int) -> None:
    """Data, optimisation, device and output flags (defaults differ for train and infer)."""
    flags.DEFINE_string("dataset", None, "Dataset directory built by data_prep/build.py.")
    flags.DEFINE_bool("use_synthetic_data", False, "Use learnable synthetic data instead of --dataset.")
    flags.DEFINE_list("synthetic_samples", ["20000", "4000", "4000"], "Synthetic train,validation,test sizes.")
    flags.DEFINE_integer("max_seq_len", 100, "Histories are cut to their last max_seq_len items.")
    flags.DEFINE_integer("epochs", epochs, "Passes over the data.")
    flags.DEFINE_integer("micro_batch_size", micro_batch_size, "Samples per device per micro-batch.")
    flags.DEFINE_integer("eval_micro_batch_size", 128, "Micro-batch size of evaluation.")
    flags.DEFINE_integer("device_iterations", 1600, "Micro-batches run on the device per host call.")
    flags.DEFINE_integer("replicas", 0, "Data-parallel devices; 0 uses every local device.")
    flags.DEFINE_enum("optimizer", "sgd", list(OPTIMIZERS), "Optimiser.")
    flags.DEFINE_float("learning_rate", 0.1, "Learning rate (the start of the schedule).")
    flags.DEFINE_enum(
        "lr_schedule",
        "fixed",
        list(LR_SCHEDULES),
        "fixed; paper (x lr_decay_factor from lr_decay_steps on); file (--lr_file).",
    )
    flags.DEFINE_integer("lr_decay_steps", 336000, "Step of the decay of the paper schedule.")
    flags.DEFINE_float("lr_decay_factor", 0.1, "Factor of the decay of the paper schedule.")
    flags.DEFINE_string("lr_file", None, "Learning-rate file: lines 'STEP LR', the first for step 0.")
    flags.DEFINE_float("clip_norm", 0.0, "Clip gradients to this global norm; 0 disables.")
    flags.DEFINE_float(
        "mba_lambda",
        0.0,
        "Mini-batch aware regularisation of the embedding rows in each batch, "
        "scaled by 1/frequency (DIN paper section 5.1; the paper uses 0.01); 0 disables.",
    )
    flags.DEFINE_float("l2", 0.0, "Plain L2 on every parameter (l2 * w added to the gradient); 0 disables.")
    flags.DEFINE_enum("data_type", "float32", list(DATA_TYPES), "Compute dtype (parameters stay float32).")
    flags.DEFINE_float(
        "loss_scaling",
        0.0,
        "Multiply the loss by this before backpropagation and divide the gradients "
        "by it (float16 gradients underflow otherwise); 0: 1024 with float16, else 1.",
    )
    flags.DEFINE_integer("seed", 1234, "Seed of initialisation, data order and negatives.")
    flags.DEFINE_string("model_path", None, "Run directory: checkpoints and summary.json.")
    flags.DEFINE_integer(
        "eval_every",
        0,
        "Evaluate on validation every N steps (and after each epoch); 0: per epoch. "
        "Evaluations happen between host calls, so at the first call boundary at or past each "
        "multiple of N (a call runs --device_iterations steps).",
    )
    flags.DEFINE_enum("select_metric", "gauc", list(SELECT_METRICS), "Validation metric that selects the best step.")
    flags.DEFINE_bool(
        "resample_negatives",
        None,
        "Draw new training negatives every epoch (the originals fix them once). Default: on when the "
        "dataset's negatives can be redrawn (not the authors' fixed ones); --noresample_negatives: off.",
    )
    flags.DEFINE_integer(
        "early_stop_patience",
        0,
        "Stop training after this many evaluations in a row without a better validation metric "
        "(the summary's 'stopped' says when); 0: train every epoch.",
    )
    flags.DEFINE_bool("donate", True, "Donate the state to the train program (saves a copy of the parameters).")
    flags.DEFINE_integer("prefetch", 2, "Chunks prepared ahead by a background thread; 0 disables.")
    flags.DEFINE_integer("log_every", 1, "Host calls between log lines.")
    flags.DEFINE_enum(
        "embedding_updates",
        "dense",
        list(EMBEDDING_UPDATES),
        "sparse: update only the embedding rows each micro-batch looks up (SGD and Adagrad equal "
        "the dense update; Adam becomes lazy Adam); dense: whole tables (docs/PERFORMANCE.md).",
    )
    flags.DEFINE_list(
        "length_buckets",
        [],
        "History-length buckets, e.g. 8,16,32,64,100: batches of similar lengths, one compiled "
        "program per bucket; empty (or just max_seq_len): every batch padded to max_seq_len, "
        "one program (the IPU's mode).",
    )
    flags.DEFINE_integer(
        "positions_per_pass",
        0,
        "Compute each micro-batch in parts of at most this many history positions (rows x "
        "length; cache-sized parts of a large batch, e.g. 4096; training: with "
        "--embedding_updates sparse, models without batch statistics); 0: all at once.",
    )
    flags.DEFINE_enum(
        "batching",
        "packed",
        list(BATCHINGS),
        "packed: each micro-batch's histories end to end in one buffer, no padding (docs/TRAINING.md); "
        "padded: every history padded to max_seq_len (the reference; gives the same batches and results).",
    )
    flags.DEFINE_integer(
        "packed_positions",
        0,
        "Buffer length of a packed training micro-batch; 0: the 99th percentile of the total history "
        "length of micro_batch_size random samples (a sample that does not fit waits for the next one).",
    )
    _alias("embedding_updates")
    _alias("length_buckets")
    _alias("positions_per_pass")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
    flags.DEFINE_integer("num_processes", 1, "Processes of a multi-process run.")
    flags.DEFINE_integer("process_id", 0, "This process's index in a multi-process run.")
    flags.DEFINE_enum("lr_type", None, ["fixed", "file", "paper"], "Graphcore's name for --lr_schedule.")
    flags.DEFINE_bool(
        "use_ipu_model",
        False,
        "Run on the IPU Model emulator (sets JAX_IPU_USE_MODEL=true; with JAX_PLATFORMS=ipu). Give it "
        "on the command line: the IPU library reads the variable when jax starts.",
    )
    for name in (
        "use_synthetic_data",
        "synthetic_samples",
        "max_seq_len",
        "micro_batch_size",
        "eval_micro_batch_size",
        "device_iterations",
        "learning_rate",
        "lr_schedule",
        "lr_decay_steps",
        "lr_decay_factor",
        "lr_file",
        "clip_norm",
        "mba_lambda",
        "data_type",
        "loss_scaling",
        "model_path",
        "eval_every",
        "select_metric",
        "resample_negatives",
        "log_every",
        "coordinator_address",
        "num_processes",
        "process_id",
        "lr_type",
        "use_ipu_model",
    ):
        _alias(name)


def define_checkpoint_flags() -> None:
    """Training checkpoints and resuming (train.py)."""
    flags.DEFINE_integer(
        "checkpoint_every",
        5000,
        "Write a training checkpoint <model_path>/checkpoints/step_N every N steps (at the first "
        "host call past it) and at the end of every epoch; 0: only at the end of epochs.",
    )
    flags.DEFINE_integer("keep_checkpoints", 3, "Training checkpoints kept (the newest); best/ is kept apart.")
    flags.DEFINE_bool(
        "resume",
        False,
        "Continue the run in --model_path from its newest checkpoint, exactly as if it had not "
        "stopped (a fresh start when there is none).",
    )
    for name in ("checkpoint_every", "keep_checkpoints"):
        _alias(name)


def define_watch_flags() -> None:
    """Progress display, TensorBoard and figures (train.py)."""
    flags.DEFINE_enum(
        "progress",
        "auto",
        ["auto", "bar", "log", "none"],
        "bar: progress bars (tqdm); log: a progress line every --progress_seconds; auto: bar when "
        "stderr is a terminal, else log; none: only the --log_every lines.",
    )
    flags.DEFINE_float("progress_seconds", 30.0, "Seconds between progress lines of --progress log.")
    flags.DEFINE_bool(
        "tensorboard",
        True,
        "Write TensorBoard events to <model_path>/tensorboard (needs tensorboardX; only with --model_path).",
    )
    flags.DEFINE_bool(
        "attention_histograms",
        True,
        "With --tensorboard: histograms of the attention weights on validation samples at each evaluation.",
    )
    flags.DEFINE_bool("train_log", True, "Append every call's metrics to <model_path>/train_log.jsonl (for plots).")
    flags.DEFINE_bool("plots", False, "Write training-curve and attention figures to <model_path>/plots at the end.")
    for name in ("progress_seconds", "attention_histograms", "train_log"):
        _alias(name)


# --help's groups of the shared flags (a command's own flags come first, under its name).
HELP_GROUPS = (
    (
        "data",
        "dataset use_synthetic_data synthetic_samples max_seq_len resample_negatives batching packed_positions "
        "length_buckets",
    ),
    (
        "training",
        "epochs micro_batch_size optimizer learning_rate lr_schedule lr_decay_steps lr_decay_factor lr_file "
        "lr_type clip_norm mba_lambda l2 seed eval_every eval_micro_batch_size select_metric early_stop_patience "
        "embedding_updates",
    ),
    (
        "devices and speed",
        "device_iterations replicas data_type loss_scaling donate prefetch positions_per_pass "
        "use_ipu_model coordinator_address num_processes process_id",
    ),
    ("checkpoints", "model_path checkpoint_every keep_checkpoints resume"),
    ("watching", "log_every progress progress_seconds tensorboard attention_histograms train_log plots"),
)


def help_text() -> str:
    """``--help``: the command's docstring and flags, the shared ones grouped (model, data, training, ...)."""
    from din_jax.cli import format_help

    main = sys.modules["__main__"]
    program = os.path.basename(sys.argv[0])
    sources = {"flag_defs", "__main__", sys.argv[0], getattr(main, "__file__", None)}
    ours = {
        flag.name for module, defined in FLAGS.flags_by_module_dict().items() if module in sources for flag in defined
    }
    aliases = sorted(name for name in ours if str(FLAGS[name].help).startswith("Alias for"))
    ours -= set(aliases)
    grouped = [(title, names.split()) for title, names in HELP_GROUPS]
    model = [name for name in list(MODEL_FLAG_DEFAULTS) + ["preset", "import_module"] if name in ours]
    listed = set(model).union(*[names for _, names in grouped])
    own = sorted(name for name in ours if name not in listed)
    groups = [("%s's own flags" % program, own), ("model", ["preset"] + [n for n in model if n != "preset"])]
    spellings = ["--" + name for name in aliases if "-" in name and name != "hidden-size"]
    spellings += [
        text
        for flag, text in (
            ("hidden_size", "--hidden_size for --attention_size"),
            ("lr_type", "--lr_type for --lr_schedule"),
        )
        if flag in FLAGS
    ]
    footer = "Graphcore's spellings work too: %s." % ", ".join(spellings) if spellings else ""
    return format_help(main.__doc__ or program, groups + grouped, footer)


def define_aliases() -> None:
    """The hyphenated spellings of Graphcore's README (``--max-seq-len``, ...), and its other names."""
    for name in _ALIASED:
        flags.DEFINE_alias(name.replace("_", "-"), name)
    if "attention_size" in FLAGS:
        # Graphcore's --hidden-size is the width of an item vector (18 + 18 = 36), our --attention_size.
        flags.DEFINE_alias("hidden_size", "attention_size")
        flags.DEFINE_alias("hidden-size", "attention_size")


def explicit_overrides() -> Dict[str, Any]:
    """The config flags given explicitly (command line or flagfile), by flag name: what wins over a preset."""
    names = set(MODEL_FLAG_DEFAULTS) | set(TRAIN_FLAGS) | set(ALIASES)
    return {name: FLAGS[name].value for name in names if name in FLAGS and FLAGS[name].present}


def parse_flag_words(words: Sequence[str]) -> Dict[str, Any]:
    """``['--attention=dot', '--nosplit_attention', ...]`` as typed values by flag name, without touching FLAGS."""
    values: Dict[str, Any] = {}
    for word in words:
        name, has_value, text = word[2:].partition("=")
        name = "attention_size" if name in ("hidden_size", "hidden-size") else name.replace("-", "_")
        if name not in FLAGS and name.startswith("no") and name[2:] in FLAGS and not has_value:
            name, has_value, text = name[2:], True, "false"
        if name not in FLAGS:
            raise ConfigError("unknown flag %s" % word)
        flag = FLAGS[name]
        if not has_value and flag.boolean:
            text = "true"
        try:
            values[name] = flag.parser.parse(text)
        except (ValueError, TypeError) as error:
            raise ConfigError("%s: %s" % (word, error)) from None
    return values


def command_defaults() -> Dict[str, Any]:
    """This command's flag defaults that differ from TrainConfig's (e.g. a larger micro-batch)."""
    config = TrainConfig()
    return {
        name: FLAGS[name].default
        for name in TRAIN_FLAGS
        if name in FLAGS and not FLAGS[name].present and FLAGS[name].default != getattr(config, name)
    }


def build_train_config() -> TrainConfig:
    """The TrainConfig of the parsed flags (``din_jax.config.resolve_config``)."""
    return resolve_config(FLAGS.preset, explicit_overrides(), command_defaults())


def import_user_modules() -> None:
    """Imports every --import_module: a module name (the working directory is on the path) or a .py file."""
    for name in FLAGS.import_module:
        try:
            if name.endswith(".py"):
                if not os.path.isfile(name):
                    raise ConfigError("--import_module %s: no such file" % name)
                module_name = os.path.splitext(os.path.basename(name))[0]
                spec = importlib.util.spec_from_file_location(module_name, name)
                if spec is None or spec.loader is None:
                    raise ConfigError("--import_module %s: cannot load this file" % name)
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                spec.loader.exec_module(module)
            else:
                if os.getcwd() not in sys.path:
                    sys.path.insert(0, os.getcwd())
                importlib.import_module(name)
        except ConfigError:
            raise
        except Exception as error:  # noqa: BLE001 - the user's module failed: say where and how
            frames = traceback.extract_tb(error.__traceback__)
            where = " at %s:%d" % (frames[-1].filename, frames[-1].lineno) if frames else ""
            raise ConfigError(
                "--import_module %s: importing it raised %s%s: %s" % (name, type(error).__name__, where, error)
            ) from error


def initialize_distributed() -> None:
    """Starts JAX's multi-process runtime when --num_processes > 1."""
    if FLAGS.num_processes <= 1:
        return
    if not FLAGS.coordinator_address:
        raise ConfigError("--num_processes %d needs --coordinator_address HOST:PORT" % FLAGS.num_processes)
    if not 0 <= FLAGS.process_id < FLAGS.num_processes:
        raise ConfigError("--process_id must be in [0, %d)" % FLAGS.num_processes)
    from din_jax import distributed

    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)


def check_output_dir(flag: str, path: Optional[str]) -> None:
    """Fails before any work when directory ``path`` cannot be created or written."""
    if not path:
        return
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError("--%s %s: %s is a file, not a directory" % (flag, path, existing))
    if not os.access(existing, os.W_OK):
        raise ConfigError("--%s %s: %s is not writable" % (flag, path, existing))


def check_output_file(flag: str, path: Optional[str]) -> None:
    """Fails before any work when file ``path``'s folder cannot take it."""
    if not path:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ConfigError("--%s %s is a directory; give a file name" % (flag, path))
    if not os.path.isdir(folder):
        raise ConfigError("--%s %s: the folder %s does not exist" % (flag, path, folder))
    if not os.access(folder, os.W_OK):
        raise ConfigError("--%s %s: the folder %s is not writable" % (flag, path, folder))


def fail(program: str, error: Any) -> None:
    """Prints a one-line error (no traceback) and exits with status 2.

    ``error`` is an exception or a message. An OSError is told as ``PATH:
    reason``, the form of the shell, without its errno prefix.
    """
    if isinstance(error, OSError) and error.strerror:
        text = "%s: %s" % (error.filename, error.strerror) if error.filename else error.strerror
    else:
        text = str(error).strip() or type(error).__name__
    sys.stderr.write("%s: error: %s\n" % (program, text.splitlines()[0]))
    sys.exit(2)


def run(main: Callable[[List[str]], Any]) -> None:
    """``absl.app.run(main)`` with the errors of the command line told in one line (``din_jax.cli.run_main``)."""
    from din_jax.cli import run_main

    def check() -> Optional[str]:
        if "use_ipu_model" in FLAGS and FLAGS.use_ipu_model and os.environ.get("JAX_IPU_USE_MODEL") != "true":
            return (
                "--use_ipu_model must be given on the command line (not in a flagfile), or set "
                "JAX_IPU_USE_MODEL=true: the IPU library reads it when jax starts"
            )
        return None

    run_main(main, fail, check, help_text)
