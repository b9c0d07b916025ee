"""Loading pickled data files without letting them run code.

A pickle names the callables that rebuild its objects; ``pickle.load`` would
import and call any of them (``os.system`` included). ``RestrictedUnpickler``
resolves only plain containers, numbers, strings and numpy arrays and refuses
every other name, so a dataset file can describe data but not execute it.
"""

import _compat_pickle
import builtins
import codecs
import collections
import importlib
import io
import pickle
from typing import Any, List

import numpy as np

from data_prep.report import DataPrepError


class UnsafePickleError(DataPrepError):
    """A pickle asked for a callable outside the allow-list."""


_BUILTINS = (
    "set",
    "frozenset",
    "list",
    "dict",
    "tuple",
    "bytearray",
    "bytes",
    "str",
    "int",
    "float",
    "complex",
    "bool",
    "slice",
    "range",
)


def _numpy_core(submodule: str):
    """numpy 2 moved numpy.core to numpy._core; pickles name either."""
    try:
        return importlib.import_module("numpy._core." + submodule)
    except ImportError:
        return importlib.import_module("numpy.core." + submodule)


def _allowed(module: str, name: str):
    """Returns the object a pickle may reference as ``module.name``, or None."""
    if module in ("builtins", "__builtin__") and name in _BUILTINS:
        return getattr(builtins, name)
    if module == "collections" and name == "OrderedDict":
        return collections.OrderedDict
    # Protocol-2 pickles written by Python 3 encode bytes as _codecs.encode(text, "latin1").
    if module == "_codecs" and name == "encode":
        return codecs.encode
    if module == "numpy" and name in ("ndarray", "dtype"):
        return getattr(np, name)
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
        return getattr(_numpy_core("multiarray"), name)
    if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
        return getattr(_numpy_core("numeric"), name)
    return None


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose ``find_class`` admits only data types (see module docstring)."""

    def __init__(self, file, *, source: str = "<pickle>", encoding: str = "latin1"):
        # latin1 maps every byte of a Python 2 str to one character: old pickles
        # (the DIN authors' dataset.pkl, numpy arrays inside them) load unchanged.
        super().__init__(file, encoding=encoding)
        self._source = source

    def find_class(self, module: str, name: str):
        # Python 2 names (e.g. __builtin__.set) are mapped first, as pickle's own find_class does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        found = _allowed(module, name)
        if found is None:
            raise UnsafePickleError(
                f"{self._source}: refusing to load {module}.{name} from a pickle: only plain containers, numbers, "
                "strings and numpy arrays are allowed"
            )
        return found


def load_pickles(path: str, expected: int = 0) -> List[Any]:
    """Loads every pickle stored one after another in ``path`` through ``RestrictedUnpickler``.

    Args:
      path: the file.
      expected: if > 0, the number of pickles the file must hold.

    Raises:
      UnsafePickleError: the file references a callable outside the allow-list.
      DataPrepError: unreadable, truncated or not a pickle; wrong count.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise DataPrepError(f"cannot read {path}: {error.strerror or error}") from None
    stream = io.BytesIO(data)
    objects = []
    while stream.tell() < len(data):
        try:
            objects.append(RestrictedUnpickler(stream, source=path).load())
        except UnsafePickleError:
            raise
        except (
            pickle.UnpicklingError,
            EOFError,
            ValueError,
            TypeError,
            AttributeError,
            IndexError,
            KeyError,
            UnicodeDecodeError,
            MemoryError,
        ) as error:
            raise DataPrepError(
                f"{path}: not a valid pickle (object {len(objects) + 1}: {type(error).__name__}: {error})"
            ) from None
    if expected and len(objects) != expected:
        raise DataPrepError(f"{path}: expected {expected} pickled objects, found {len(objects)}")
    return objects


def load_pickle(path: str) -> Any:
    """Loads the single pickled object in ``path`` (restricted, see ``load_pickles``)."""
    return load_pickles(path, expected=1)[0]
