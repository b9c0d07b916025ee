"""The restricted unpickler: data loads, code does not run."""

import collections
import os
import pickle

import numpy as np
import pytest

from data_prep.report import DataPrepError
from data_prep.safe_pickle import UnsafePickleError, load_pickle, load_pickles


class _RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, ("touch " + self.marker,))


class _Plain:
    pass


def test_malicious_pickle_is_refused_and_does_not_run(tmp_path):
    marker = str(tmp_path / "pwned")
    path = str(tmp_path / "evil.pkl")
    with open(path, "wb") as handle:
        pickle.dump({"train": [1, 2], "payload": _RunsCommand(marker)}, handle, protocol=2)
    with pytest.raises(UnsafePickleError, match=r"refusing to load (posix|nt|os)\.system"):
        load_pickle(path)
    assert not os.path.exists(marker)


@pytest.mark.parametrize("obj", [_Plain(), collections.Counter("ab"), eval])
def test_other_callables_are_refused(tmp_path, obj):
    path = str(tmp_path / "x.pkl")
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=2)
    with pytest.raises(UnsafePickleError, match="refusing to load"):
        load_pickle(path)


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_data_loads(tmp_path, protocol):
    data = {
        "list": [(1, [2, 3], 4, 0)],
        "set": {1, 2},
        "frozen": frozenset([3]),
        "bytes": b"\x00\xff",
        "float": 1.5,
        "ordered": collections.OrderedDict(a=1),
        "array": np.arange(6, dtype=np.int32).reshape(2, 3),
        "scalar": np.int64(7),
        "strings": np.array(["a", "bc"]),
    }
    path = str(tmp_path / "ok.pkl")
    with open(path, "wb") as handle:
        pickle.dump(data, handle, protocol=protocol)
    loaded = load_pickle(path)
    assert loaded["list"] == data["list"] and loaded["set"] == {1, 2} and loaded["bytes"] == b"\x00\xff"
    assert loaded["array"].dtype == np.int32 and loaded["array"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert loaded["scalar"] == 7 and loaded["strings"].tolist() == ["a", "bc"]


def test_several_pickles_in_one_file(tmp_path):
    path = str(tmp_path / "dataset.pkl")
    with open(path, "wb") as handle:
        for obj in ([1], [2], np.array([3, 4], dtype=np.int32), (5, 6, 7)):
            pickle.dump(obj, handle, protocol=2)
    objects = load_pickles(path, expected=4)
    assert objects[0] == [1] and objects[3] == (5, 6, 7)
    with pytest.raises(DataPrepError, match="expected 3 pickled objects, found 4"):
        load_pickles(path, expected=3)


def test_python2_pickle_with_str_and_set(tmp_path):
    # What Python 2's cPickle.dump({'a': set([1])}, f, 2) writes: __builtin__ names, py2 str (BINSTRING).
    py2 = b"\x80\x02}q\x00U\x01aq\x01c__builtin__\nset\nq\x02]q\x03K\x01a\x85q\x04Rq\x05s."
    path = str(tmp_path / "py2.pkl")
    open(path, "wb").write(py2)
    assert load_pickle(path) == {"a": {1}}


def test_truncated_pickle_is_a_clear_error(tmp_path):
    path = str(tmp_path / "cut.pkl")
    open(path, "wb").write(pickle.dumps(list(range(100)), protocol=2)[:-10])
    with pytest.raises(DataPrepError, match="cut.pkl: not a valid pickle"):
        load_pickle(path)
