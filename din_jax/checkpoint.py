"""Checkpoints as ``.npz`` of flattened state leaves plus a JSON of metadata.

Readable by every supported stack: the IPU one (flax 0.6.0) has no orbax and
its ``serialization.to_bytes`` fails under jax 0.4.13. A checkpoint is a
directory holding ``state.npz`` and ``checkpoint.json``; the JSON records the
npz's sha256, which is checked on load. Directories are written to a
temporary name and renamed, so a crash never leaves a half-written one.

A checkpoint may also hold named arrays outside the state (``<name>.npy``,
e.g. the item -> category map a ``Predictor`` needs), each with its sha256 in
the JSON, and training checkpoints live in numbered directories
``<root>/step_<N>`` of which the last few are kept (``list_step_checkpoints``,
``prune_step_checkpoints``).
"""

import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from flax import serialization, traverse_util

CHECKPOINT_VERSION = 1
STATE_FILE = "state.npz"
META_FILE = "checkpoint.json"
STEP_PREFIX = "step_"
_SEP = "/"
_ARRAY_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_STEP_DIR = re.compile(r"^" + STEP_PREFIX + r"(\d+)$")


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


def save_checkpoint(directory: str, tree: Any, metadata: Dict[str, Any],
                    arrays: Optional[Dict[str, np.ndarray]] = None) -> str:
    """Writes ``tree`` (host arrays, e.g. after ``jax.device_get``) atomically.

    An existing checkpoint at ``directory`` is replaced only once the new one
    is complete.

    Args:
      arrays: named arrays stored beside the state as ``<name>.npy`` (read
        them with ``load_array``); names are lower-case identifiers.

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
        if arrays:
            meta["arrays"] = {}
            for name, value in sorted(arrays.items()):
                if not _ARRAY_NAME.match(name):
                    raise ValueError("checkpoint array name %r: use lower-case letters, digits and _" % name)
                array_path = os.path.join(tmp, name + ".npy")
                np.save(array_path, np.asarray(value), allow_pickle=False)
                meta["arrays"][name] = _sha256(array_path)
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
        if os.path.isdir(directory.rstrip(os.sep) + ".old"):
            raise CheckpointError("no checkpoint at %s (directory not found; %s.old holds the previous one: the "
                                  "process died while replacing it)" % (directory, directory.rstrip(os.sep)))
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


def load_array(directory: str, name: str, meta: Optional[Dict[str, Any]] = None) -> Optional[np.ndarray]:
    """A named array saved with ``save_checkpoint(..., arrays=...)``, checksum verified.

    Returns:
      The array, or None when the checkpoint has no array of that name.

    Raises:
      CheckpointError: the file is missing, corrupt or unreadable.
    """
    meta = read_metadata(directory) if meta is None else meta
    digest = (meta.get("arrays") or {}).get(name)
    if digest is None:
        return None
    path = os.path.join(directory, name + ".npy")
    if not os.path.isfile(path):
        raise CheckpointError("checkpoint %s is incomplete (%s.npy missing)" % (directory, name))
    if _sha256(path) != digest:
        raise CheckpointError("checkpoint %s is corrupt: %s.npy checksum does not match its metadata" % (directory, name))
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise CheckpointError("checkpoint %s: cannot read %s.npy: %s" % (directory, name, error)) from None


def step_checkpoint_dir(root: str, step: int) -> str:
    """``<root>/step_<step>``: where the training checkpoint of a step lives."""
    return os.path.join(root, "%s%d" % (STEP_PREFIX, int(step)))


def list_step_checkpoints(root: str) -> List[Tuple[int, str]]:
    """``(step, directory)`` of the ``step_<N>`` checkpoints under ``root``, oldest first.

    Only complete directories count (a ``checkpoint.json`` is written last, in
    the temporary directory, before the rename); an absent root gives [].
    """
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = _STEP_DIR.match(name)
        path = os.path.join(root, name)
        if match and os.path.isfile(os.path.join(path, META_FILE)):
            found.append((int(match.group(1)), path))
    return sorted(found)


def prune_step_checkpoints(root: str, keep: int) -> List[str]:
    """Deletes all but the ``keep`` newest ``step_<N>`` checkpoints; returns the deleted directories."""
    if keep < 1:
        raise ValueError("keep must be >= 1, got %r" % keep)
    doomed = [path for _, path in list_step_checkpoints(root)[:-keep]]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def remove_temporaries(root: str) -> List[str]:
    """Deletes what an interrupted ``save_checkpoint`` leaves in ``root``: ``.<name>.tmp-*`` directories.

    A ``<name>.old`` whose ``<name>`` exists is deleted too; one without
    (the process died between the two renames) is renamed back to ``<name>``.

    Returns:
      The paths deleted or restored.
    """
    if not os.path.isdir(root):
        return []
    touched = []
    for path in glob.glob(os.path.join(root, ".*.tmp-*")):
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            touched.append(path)
    for path in glob.glob(os.path.join(root, "*.old")):
        if not os.path.isdir(path):
            continue
        target = path[:-len(".old")]
        if os.path.exists(target):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.rename(path, target)
        touched.append(path)
    return touched
