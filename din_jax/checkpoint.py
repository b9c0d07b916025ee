"""Checkpoints as ``.npz`` of flattened state leaves plus a JSON of metadata.

Readable by every supported stack: the IPU one (flax 0.6.0) has no orbax and
its ``serialization.to_bytes`` fails under jax 0.4.13. A checkpoint is a
directory holding ``state.npz`` and ``checkpoint.json``; the JSON records the
npz's sha256 and its own (``metadata_sha256``, over the rest of the JSON),
both checked on load. Directories are written to a temporary name, synced to
disk and renamed, so a crash or a power cut never leaves a half-written one.

Keys of ``state.npz`` are the tree paths joined with ``/``; a ``/`` or ``%``
inside one path component (the sparse optimiser's moments are keyed by table
paths such as ``embedding/item``) is written ``%2F`` / ``%25``, so that every
key maps back to exactly one path.

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

from din_jax.fileio import flush_to_disk, fsync_path, json_default, save_array

# Version 2 added metadata_sha256 and escaped key components. Version 1
# checkpoints (no metadata checksum; a '/' inside a component written as is)
# stay readable: their keys are matched in their unescaped form.
CHECKPOINT_VERSION = 2
READABLE_VERSIONS = (1, 2)
META_CHECKSUM = "metadata_sha256"
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


def _escape(component: Any) -> str:
    return str(component).replace("%", "%25").replace(_SEP, "%2F")


def path_key(path: Tuple[Any, ...]) -> str:
    """The ``state.npz`` key of a tree path: ``('params', 'embedding', 'item')`` -> ``'params/embedding/item'``."""
    return _SEP.join(_escape(component) for component in path)


def _legacy_key(path: Tuple[Any, ...]) -> str:
    return _SEP.join(str(component) for component in path)


def flatten_state(tree: Any) -> Dict[str, np.ndarray]:
    """``{'params/embedding/item': array, ...}`` for a pytree of host arrays (keys: ``path_key``)."""
    state_dict = serialization.to_state_dict(tree)
    flat = traverse_util.flatten_dict(state_dict)
    return {path_key(path): np.asarray(value) for path, value in flat.items()}


def _canonical_json(meta: Dict[str, Any]) -> str:
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), default=json_default)


def metadata_checksum(meta: Dict[str, Any]) -> str:
    """The sha256 of the metadata without its own ``metadata_sha256``, over a canonical JSON text.

    Computed on what JSON gives back (tuples as lists, numpy scalars as
    Python numbers), so the value is the same before saving and after loading.
    """
    body = {key: value for key, value in meta.items() if key != META_CHECKSUM}
    return hashlib.sha256(_canonical_json(json.loads(_canonical_json(body))).encode("utf-8")).hexdigest()


def save_checkpoint(directory: str, tree: Any, metadata: Dict[str, Any],
                    arrays: Optional[Dict[str, np.ndarray]] = None) -> str:
    """Writes ``tree`` (host arrays, e.g. after ``jax.device_get``) atomically.

    An existing checkpoint at ``directory`` is replaced only once the new one
    is complete and on disk.

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
        with open(state_path, "wb") as handle:
            np.savez(handle, **flatten_state(tree))
            flush_to_disk(handle)
        meta = dict(metadata)
        meta.pop(META_CHECKSUM, None)
        meta["version"] = CHECKPOINT_VERSION
        meta["sha256"] = _sha256(state_path)
        if arrays:
            meta["arrays"] = {}
            for name, value in sorted(arrays.items()):
                if not _ARRAY_NAME.match(name):
                    raise ValueError("checkpoint array name %r: use lower-case letters, digits and _" % name)
                array_path = os.path.join(tmp, name + ".npy")
                save_array(array_path, value)
                meta["arrays"][name] = _sha256(array_path)
        meta[META_CHECKSUM] = metadata_checksum(meta)
        with open(os.path.join(tmp, META_FILE), "w") as handle:
            json.dump(meta, handle, indent=2, sort_keys=True, default=json_default)
            flush_to_disk(handle)
        # Without these a power cut after the rename could leave a directory
        # whose entries or contents never reached the disk.
        fsync_path(tmp)
        old = None
        if os.path.exists(directory):
            old = directory + ".old"
            if os.path.exists(old):
                shutil.rmtree(old)
            os.rename(directory, old)
        os.rename(tmp, directory)
        fsync_path(parent)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_metadata(directory: str) -> Dict[str, Any]:
    """The checkpoint's JSON metadata, its checksum verified; CheckpointError if missing, unreadable or corrupt."""
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
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError("checkpoint metadata %s is not valid JSON: %s" % (path, error)) from None
    if not isinstance(meta, dict):
        raise CheckpointError("checkpoint metadata %s is not a JSON object" % path)
    version = meta.get("version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise CheckpointError("checkpoint %s has version %r; this din_jax reads versions %s"
                              % (directory, version, ", ".join(str(v) for v in READABLE_VERSIONS)))
    stored = meta.get(META_CHECKSUM)
    # Version 1 never had the field; a version 1 with it is a flipped version number.
    if (version >= 2 or stored is not None) and stored != metadata_checksum(meta):
        raise CheckpointError("checkpoint %s is corrupt: %s does not match its %s (an edited or damaged file)"
                              % (directory, META_FILE, META_CHECKSUM))
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


def variables_prefix(meta: Dict[str, Any], flat: Dict[str, np.ndarray]) -> str:
    """Where a checkpoint keeps the model's variables: ``''`` (``best``/``last``) or ``'state/'``.

    Training checkpoints (``checkpoints/step_N``, metadata with a ``train``
    section) hold the whole TrainState under ``state/``.
    """
    if isinstance(meta.get("train"), dict):
        return "state" + _SEP
    if not any(key.startswith("params" + _SEP) for key in flat) and \
            any(key.startswith("state" + _SEP + "params" + _SEP) for key in flat):
        return "state" + _SEP
    return ""


def restore_tree(template: Any, flat: Dict[str, np.ndarray], prefix: Optional[str] = None, source: str = "checkpoint") -> Any:
    """Fills ``template``'s structure with arrays from ``flat``.

    Args:
      template: a pytree with the expected structure, shapes and dtypes.
      flat: arrays keyed by ``flatten_state`` paths.
      prefix: read ``prefix/...`` keys of ``flat`` (e.g. only ``params``);
        ``/``-separated, components escaped as in ``path_key``.
      source: named in error messages.

    Raises:
      CheckpointError: a missing, extra or differently shaped entry, naming it.
    """
    template_dict = serialization.to_state_dict(template)
    expected = traverse_util.flatten_dict(template_dict, keep_empty_nodes=True)
    lead = (prefix.rstrip(_SEP) + _SEP) if prefix else ""
    available = {key[len(lead):]: value for key, value in flat.items() if key.startswith(lead)}
    restored = {}
    used = set()
    for path, want in expected.items():
        if want is traverse_util.empty_node:
            restored[path] = want
            continue
        key = path_key(path)
        if key not in available and _legacy_key(path) in available:
            key = _legacy_key(path)  # a version 1 checkpoint
        if key not in available:
            raise CheckpointError("%s has no entry %r that the model needs; do the model flags match the checkpoint?"
                                  % (source, lead + key))
        got = available[key]
        used.add(key)
        want_shape = tuple(np.shape(want))
        if tuple(got.shape) != want_shape:
            raise CheckpointError(
                "%s entry %r has shape %s but the model expects %s; do the model flags match the checkpoint?"
                % (source, lead + key, tuple(got.shape), want_shape)
            )
        restored[path] = got.astype(np.asarray(want).dtype, copy=False)
    extra = sorted(set(available) - used)
    if extra:
        raise CheckpointError(
            "%s has entries the model does not have (%s%s); do the model flags match the checkpoint?"
            % (source, ", ".join(lead + key for key in extra[:3]), ", ..." if len(extra) > 3 else "")
        )
    try:
        return serialization.from_state_dict(template, traverse_util.unflatten_dict(restored))
    except (ValueError, KeyError, TypeError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError("%s does not fit the model's structure: %s" % (source, message)) from None


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
