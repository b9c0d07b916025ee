"""Checkpoints: a directory of ``state.npz`` (the flattened state), named ``<name>.npy`` arrays and a checksummed JSON.

Plain npz + JSON because every supported stack reads it: the IPU one (flax 0.6.0) has no orbax and its
``serialization.to_bytes`` fails under jax 0.4.13. Directories are written to a temporary name, synced to disk and
renamed, so a crash or a power cut never leaves a half-written one. The format: docs/WATCHING.md.
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

# Version 2 added metadata_sha256 and escaped key components; version 1 keys are matched unescaped.
CHECKPOINT_VERSION = 2
READABLE_VERSIONS = (1, 2)
META_CHECKSUM = "metadata_sha256"
STATE_FILE = "state.npz"
META_FILE = "checkpoint.json"
STEP_PREFIX = "step_"
_SEP = "/"
_ARRAY_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_STEP_DIR = re.compile(r"^" + STEP_PREFIX + r"(\d+)$")
_FLAGS_MATCH = "do the model flags match the checkpoint?"


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
    """The ``state.npz`` key of a tree path: ``('params', 'embedding', 'item')`` -> ``'params/embedding/item'``.

    A ``/`` or ``%`` inside one component (the sparse optimiser's moments are keyed ``embedding/item``) is written
    ``%2F`` / ``%25``, so that every key maps back to exactly one path.
    """
    return _SEP.join(_escape(component) for component in path)


def _checksum_error(directory: str, name: str) -> CheckpointError:
    return CheckpointError("checkpoint %s is corrupt: %s checksum does not match its metadata" % (directory, name))


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

    Computed on what JSON gives back (tuples as lists, numpy scalars as numbers): the same before saving and after.
    """
    body = {key: value for key, value in meta.items() if key != META_CHECKSUM}
    return hashlib.sha256(_canonical_json(json.loads(_canonical_json(body))).encode("utf-8")).hexdigest()


def save_checkpoint(
    directory: str, tree: Any, metadata: Dict[str, Any], arrays: Optional[Dict[str, np.ndarray]] = None
) -> str:
    """Writes ``tree`` (host arrays) atomically to ``directory`` and returns it.

    An existing checkpoint there is replaced only once the new one is complete and on disk. ``arrays`` are stored
    beside the state as ``<name>.npy`` (names: lower-case identifiers; read them with ``load_array``).
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
        # Without these a power cut after the rename could leave a directory whose entries never reached the disk.
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
            raise CheckpointError(
                "no checkpoint at %s (directory not found; %s.old holds the previous one: the "
                "process died while replacing it)" % (directory, directory.rstrip(os.sep))
            )
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
        readable = ", ".join(str(v) for v in READABLE_VERSIONS)
        raise CheckpointError(
            "checkpoint %s has version %r; this din_jax reads versions %s" % (directory, version, readable)
        )
    stored = meta.get(META_CHECKSUM)
    # Version 1 never had the field; a version 1 with it is a flipped version number.
    if (version >= 2 or stored is not None) and stored != metadata_checksum(meta):
        raise CheckpointError(
            "checkpoint %s is corrupt: %s does not match its %s (an edited or damaged file)"
            % (directory, META_FILE, META_CHECKSUM)
        )
    return meta


def load_checkpoint(directory: str) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """``(flat arrays keyed by path, metadata)``, verified; CheckpointError for missing, corrupt or unreadable files."""
    meta = read_metadata(directory)
    state_path = os.path.join(directory, STATE_FILE)
    if not os.path.isfile(state_path):
        raise CheckpointError("checkpoint %s is incomplete (%s missing)" % (directory, STATE_FILE))
    if _sha256(state_path) != meta.get("sha256"):
        raise _checksum_error(directory, STATE_FILE)
    try:
        with np.load(state_path, allow_pickle=False) as data:
            flat = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointError("checkpoint %s: cannot read %s: %s" % (directory, STATE_FILE, error)) from None
    return flat, meta


def variables_prefix(meta: Dict[str, Any], flat: Dict[str, np.ndarray]) -> str:
    """Where a checkpoint keeps the model's variables: ``''`` (``best``/``last``) or ``'state/'``.

    Training checkpoints (``checkpoints/step_N``, metadata with a ``train`` section) hold the whole TrainState.
    """
    if isinstance(meta.get("train"), dict):
        return "state" + _SEP
    has_params = any(key.startswith("params" + _SEP) for key in flat)
    if not has_params and any(key.startswith("state" + _SEP + "params" + _SEP) for key in flat):
        return "state" + _SEP
    return ""


def restore_tree(template: Any, flat: Dict[str, np.ndarray], prefix: Optional[str] = None, source="checkpoint") -> Any:
    """Fills ``template``'s structure (shapes, dtypes) with the arrays of ``flat`` under ``prefix`` (e.g. ``params``).

    CheckpointError names a missing, extra or differently shaped entry; ``source`` names the checkpoint in it.
    """
    template_dict = serialization.to_state_dict(template)
    expected = traverse_util.flatten_dict(template_dict, keep_empty_nodes=True)
    lead = (prefix.rstrip(_SEP) + _SEP) if prefix else ""
    available = {key[len(lead) :]: value for key, value in flat.items() if key.startswith(lead)}
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
            raise CheckpointError("%s has no entry %r that the model needs; %s" % (source, lead + key, _FLAGS_MATCH))
        got = available[key]
        used.add(key)
        want_shape = tuple(np.shape(want))
        if tuple(got.shape) != want_shape:
            shapes = (source, lead + key, tuple(got.shape), want_shape, _FLAGS_MATCH)
            raise CheckpointError("%s entry %r has shape %s but the model expects %s; %s" % shapes)
        restored[path] = got.astype(np.asarray(want).dtype, copy=False)
    extra = sorted(set(available) - used)
    if extra:
        names = ", ".join(lead + key for key in extra[:3]) + (", ..." if len(extra) > 3 else "")
        raise CheckpointError("%s has entries the model does not have (%s); %s" % (source, names, _FLAGS_MATCH))
    try:
        return serialization.from_state_dict(template, traverse_util.unflatten_dict(restored))
    except (ValueError, KeyError, TypeError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError("%s does not fit the model's structure: %s" % (source, message)) from None


def load_array(directory: str, name: str, meta: Optional[Dict[str, Any]] = None) -> Optional[np.ndarray]:
    """A named array of ``save_checkpoint(..., arrays=...)``, verified (CheckpointError); None if there is none."""
    meta = read_metadata(directory) if meta is None else meta
    digest = (meta.get("arrays") or {}).get(name)
    if digest is None:
        return None
    path = os.path.join(directory, name + ".npy")
    if not os.path.isfile(path):
        raise CheckpointError("checkpoint %s is incomplete (%s.npy missing)" % (directory, name))
    if _sha256(path) != digest:
        raise _checksum_error(directory, name + ".npy")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise CheckpointError("checkpoint %s: cannot read %s.npy: %s" % (directory, name, error)) from None


def step_checkpoint_dir(root: str, step: int) -> str:
    """``<root>/step_<step>``: where the training checkpoint of a step lives."""
    return os.path.join(root, "%s%d" % (STEP_PREFIX, int(step)))


def list_step_checkpoints(root: str, complete: bool = True) -> List[Tuple[int, str]]:
    """``(step, directory)`` of the complete ``step_<N>`` checkpoints under ``root``, oldest first ([] if absent);
    ``complete=False``: the ``step_<N>`` directories without their JSON (written last) instead."""
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = _STEP_DIR.match(name)
        path = os.path.join(root, name)
        if match and os.path.isfile(os.path.join(path, META_FILE)) == complete:  # the JSON is written last
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
    """Deletes what an interrupted ``save_checkpoint`` leaves in ``root``; returns the paths deleted or restored.

    That is ``.<name>.tmp-*`` directories, and a ``<name>.old`` whose ``<name>`` exists; one without (the process
    died between the two renames) is renamed back to ``<name>``.
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
        target = path[: -len(".old")]
        if os.path.exists(target):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.rename(path, target)
        touched.append(path)
    return touched
