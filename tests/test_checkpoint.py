"""The checkpoint format: unambiguous keys, checksummed metadata, older checkpoints still readable."""

import json
import os

import numpy as np
import pytest

from din_jax import checkpoint as ckpt


def _tree():
    # The sparse optimiser keys its moments by table path: a "/" inside one component.
    return {
        "params": {"embedding": {"item": np.arange(6, dtype=np.float32).reshape(3, 2)}},
        "opt_state": {
            "tables": {"mu": {"embedding/item": np.ones((3, 2), np.float32), "odd%name": np.zeros((2,), np.int32)}}
        },
    }


def _zeros_like(tree):
    if isinstance(tree, dict):
        return {key: _zeros_like(value) for key, value in tree.items()}
    return np.zeros_like(tree)


def _assert_trees_equal(a, b):
    assert isinstance(b, dict) and sorted(a) == sorted(b)
    for key in a:
        if isinstance(a[key], dict):
            _assert_trees_equal(a[key], b[key])
        else:
            np.testing.assert_array_equal(a[key], b[key])
            assert a[key].dtype == b[key].dtype


def test_keys_with_the_separator_round_trip(tmp_path):
    path = ckpt.save_checkpoint(str(tmp_path / "c"), _tree(), {"step": 3})
    flat, meta = ckpt.load_checkpoint(path)
    assert "opt_state/tables/mu/embedding%2Fitem" in flat and "opt_state/tables/mu/odd%25name" in flat
    assert meta["version"] == ckpt.CHECKPOINT_VERSION
    _assert_trees_equal(_tree(), ckpt.restore_tree(_zeros_like(_tree()), flat))
    restored = ckpt.restore_tree(_zeros_like(_tree()["opt_state"]), flat, prefix="opt_state")
    _assert_trees_equal(_tree()["opt_state"], restored)


def _as_version_1(path):
    """Rewrites a checkpoint as the first format wrote it: raw keys, no metadata checksum."""
    flat, meta = ckpt.load_checkpoint(path)
    legacy = {key.replace("%2F", "/").replace("%25", "%"): value for key, value in flat.items()}
    state = os.path.join(path, ckpt.STATE_FILE)
    with open(state, "wb") as handle:
        np.savez(handle, **legacy)
    meta.update(version=1, sha256=ckpt._sha256(state))
    del meta[ckpt.META_CHECKSUM]
    with open(os.path.join(path, ckpt.META_FILE), "w") as handle:
        json.dump(meta, handle)
    return meta


def test_version_1_checkpoints_still_load(tmp_path):
    path = ckpt.save_checkpoint(str(tmp_path / "c"), _tree(), {"step": 3})
    _as_version_1(path)
    flat, meta = ckpt.load_checkpoint(path)
    assert meta["version"] == 1 and "opt_state/tables/mu/embedding/item" in flat
    _assert_trees_equal(_tree(), ckpt.restore_tree(_zeros_like(_tree()), flat))


def test_a_changed_digit_in_the_metadata_is_caught(tmp_path):
    path = ckpt.save_checkpoint(
        str(tmp_path / "c"),
        _tree(),
        {
            "step": 3,
            "train": {
                "epoch_calls_done": 17,
                "history": [{"step": 2, "gauc": 0.625}],
                "negatives_rng": {"state": {"state": 12345678901234567890}},
            },
        },
    )
    meta_file = os.path.join(path, ckpt.META_FILE)
    text = open(meta_file).read()
    for old, new in (("17", "18"), ("0.625", "0.626"), ("12345678901234567890", "12345678901234567891")):
        open(meta_file, "w").write(text.replace(old, new, 1))
        with pytest.raises(
            ckpt.CheckpointError,
            match=r"is corrupt: checkpoint.json does not match its "
            r"metadata_sha256",
        ) as error:
            ckpt.load_checkpoint(path)
        assert path in str(error.value) and "\n" not in str(error.value)
    # Reformatting alone (whitespace, key order) keeps it valid: the checksum is over the content.
    open(meta_file, "w").write(json.dumps(json.loads(text), indent=None, sort_keys=False))
    ckpt.load_checkpoint(path)
    # A version 1 checkpoint has no checksum to check; "version 1" with one is a flipped version.
    meta = json.loads(text)
    meta["version"] = 1
    open(meta_file, "w").write(json.dumps(meta))
    with pytest.raises(ckpt.CheckpointError, match="is corrupt"):
        ckpt.read_metadata(path)
    meta["version"] = 9
    open(meta_file, "w").write(json.dumps(meta))
    with pytest.raises(ckpt.CheckpointError, match=r"has version 9; this din_jax reads versions 1, 2"):
        ckpt.read_metadata(path)


def test_a_structure_mismatch_is_a_checkpoint_error_naming_the_checkpoint(tmp_path):
    path = ckpt.save_checkpoint(str(tmp_path / "c"), _tree(), {"step": 3})
    flat, _ = ckpt.load_checkpoint(path)
    template = _zeros_like(_tree())
    template["opt_state"]["tables"]["mu"]["embedding/category"] = np.zeros((3, 2), np.float32)
    with pytest.raises(
        ckpt.CheckpointError,
        match=r"checkpoint %s has no entry "
        r"'opt_state/tables/mu/embedding%%2Fcategory'" % path,
    ):
        ckpt.restore_tree(template, flat, source="checkpoint %s" % path)
    del template["opt_state"]["tables"]["mu"]["embedding/category"]
    del template["opt_state"]["tables"]["mu"]["odd%name"]
    with pytest.raises(ckpt.CheckpointError, match=r"has entries the model does not have \(opt_state/tables/mu/odd"):
        ckpt.restore_tree(template, flat, source="checkpoint %s" % path)


def test_the_variables_prefix_is_found_for_every_kind_of_checkpoint():
    assert ckpt.variables_prefix({"train": {}}, {}) == "state/"
    assert ckpt.variables_prefix({}, {"params/x": 0}) == ""
    assert ckpt.variables_prefix({}, {"state/params/x": 0, "state/step": 0}) == "state/"


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path):
    path = ckpt.save_checkpoint(str(tmp_path / "c"), _tree(), {"step": 3})
    with pytest.raises(ValueError, match="checkpoint array name"):
        ckpt.save_checkpoint(path, _tree(), {"step": 4}, arrays={"Bad-Name": np.zeros(2)})
    assert ckpt.read_metadata(path)["step"] == 3
    assert sorted(os.listdir(str(tmp_path))) == ["c"]
