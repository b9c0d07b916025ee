"""Checkpoints as ``.npz`` of flattened state leaves plus a JSON of metadata.

Readable by every supported stack: the IPU one (flax 0.6.0) has no orbax and
its ``serialization.to_bytes`` fails under jax 0.4.13. A checkpoint is a
directory holding ``state.npz`` and ``checkpoint.json``; the JSON records the
npz's sha256, which is checked on load. Directories are written to a
temporary name and renamed, so a crash never leaves a half-written one.
"""

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from typing import Any, Dict, Optional, Tuple

import numpy as np
from flax import serialization, traverse_util

CHECKPOINT_VERSION = 1
STATE_FILE = "state.npz"
META_FILE = "checkpoint.json"
_SEP = "/"


class CheckpointError(Exception):
    """A checkpoint is missing, corrupt, or does not fit the model."""


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def flatten_state(tree: Any) -> Dict[str, np.ndarray]:
    """``{'params/embedding/item': array, ...}`` for a pytree of host arrays."""
    state_dict = serialization.to_state_dict(tree)
    flat = traverse_util.flatten_dict(state_dict, sep=_SEP)
    return {key: np.asarray(value) for key, value in flat.items()}


def save_checkpoint(directory: str, tree: Any, metadata: Dict[str, Any]) -> str:
    """Writes ``tree`` (host arrays, e.g. after ``jax.device_get``) atomically.

    An existing checkpoint at ``directory`` is replaced only once the new one
    is complete.

    Returns:
      ``directory``.
    """
    directory = os.path.abspath(directory)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(directory) + ".tmp-", dir=parent)
    try:
        state_path = os.path.join(tmp, STATE_FILE)
        np.savez(state_path, **flatten_state(tree))
        meta = dict(metadata)
        meta["version"] = CHECKPOINT_VERSION
        meta["sha256"] = _sha256(state_path)
        with open(os.path.join(tmp, META_FILE), "w") as handle:
            json.dump(meta, handle, indent=2, sort_keys=True, default=_json_default)
        old = None
        if os.path.exists(directory):
            old = directory + ".old"
            if os.path.exists(old):
                shutil.rmtree(old)
            os.rename(directory, old)
        os.rename(tmp, directory)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value)


def read_metadata(directory: str) -> Dict[str, Any]:
    """The checkpoint's JSON metadata; CheckpointError if missing or unreadable."""
    path = os.path.join(directory, META_FILE)
    if not os.path.isdir(directory):
        raise CheckpointError("no checkpoint at %s (directory not found)" % directory)
    if not os.path.isfile(path):
        raise CheckpointError("no checkpoint at %s (%s missing)" % (directory, META_FILE))
    try:
        with open(path) as handle:
            meta = json.load(handle)
    except ValueError as error:
        raise CheckpointError("checkpoint metadata %s is not valid JSON: %s" % (path, error)) from None
    if meta.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            "checkpoint %s has version %r; this din_jax reads version %d" % (directory, meta.get("version"), CHECKPOINT_VERSION)
        )
    return meta


def load_checkpoint(directory: str) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """Loads and verifies a checkpoint.

    Returns:
      (flat arrays keyed by path, metadata).

    Raises:
      CheckpointError: missing files, checksum mismatch, unreadable npz.
    """
    meta = read_metadata(directory)
    state_path = os.path.join(directory, STATE_FILE)
    if not os.path.isfile(state_path):
        raise CheckpointError("checkpoint %s is incomplete (%s missing)" % (directory, STATE_FILE))
    digest = _sha256(state_path)
    if digest != meta.get("sha256"):
        raise CheckpointError("checkpoint %s is corrupt: %s checksum does not match its metadata" % (directory, STATE_FILE))
    try:
        with np.load(state_path, allow_pickle=False) as data:
            flat = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointError("checkpoint %s: cannot read %s: %s" % (directory, STATE_FILE, error)) from None
    return flat, meta


def restore_tree(template: Any, flat: Dict[str, np.ndarray], prefix: Optional[str] = None, source: str = "checkpoint") -> Any:
    """Fills ``template``'s structure with arrays from ``flat``.

    Args:
      template: a pytree with the expected structure, shapes and dtypes.
      flat: arrays keyed by ``flatten_state`` paths.
      prefix: read ``prefix/...`` keys of ``flat`` (e.g. only ``params``).
      source: named in error messages.

    Raises:
      CheckpointError: a missing, extra or differently shaped entry, naming it.
    """
    template_dict = serialization.to_state_dict(template)
    expected = traverse_util.flatten_dict(template_dict, keep_empty_nodes=True, sep=_SEP)
    lead = (prefix + _SEP) if prefix else ""
    available = {key[len(lead):]: value for key, value in flat.items() if key.startswith(lead)}
    restored = {}
    for key, want in expected.items():
        if want is traverse_util.empty_node:
            restored[key] = want
            continue
        if key not in available:
            raise CheckpointError("%s has no entry %r that the model needs; do the model flags match the checkpoint?" % (source, lead + key))
        got = available[key]
        want_shape = tuple(np.shape(want))
        if tuple(got.shape) != want_shape:
            raise CheckpointError(
                "%s entry %r has shape %s but the model expects %s; do the model flags match the checkpoint?"
                % (source, lead + key, tuple(got.shape), want_shape)
            )
        restored[key] = got.astype(np.asarray(want).dtype, copy=False)
    extra = sorted(set(available) - set(expected))
    if extra:
        raise CheckpointError(
            "%s has entries the model does not have (%s%s); do the model flags match the checkpoint?"
            % (source, ", ".join(lead + key for key in extra[:3]), ", ..." if len(extra) > 3 else "")
        )
    return serialization.from_state_dict(template, traverse_util.unflatten_dict(restored, sep=_SEP))
