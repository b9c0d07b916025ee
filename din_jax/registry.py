"""String-to-factory registries for the swappable parts (models, attention, activations)."""

import dataclasses
import functools
from typing import Any, Callable, Dict, List, Union


class Registry:
    """A named table of factories (module classes or ``functools.partial`` of them).

    ``make`` instantiates an entry with only the keyword arguments its
    dataclass fields accept, so one model can hand the same configuration to
    every attention or activation and each takes what it understands.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Callable[..., Any]] = {}

    def register(self, name: str, factory: Callable[..., Any], overwrite: bool = False) -> Callable[..., Any]:
        if not isinstance(name, str) or not name:
            raise ValueError("%s names must be non-empty strings, got %r" % (self.kind, name))
        if name in self._entries and not overwrite:
            raise ValueError("%s %r is already registered; pass overwrite=True to replace it" % (self.kind, name))
        self._entries[name] = factory
        return factory

    def names(self) -> List[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name_or_factory: Union[str, Callable[..., Any]]) -> Callable[..., Any]:
        """Returns the factory registered under a name; a factory passes through."""
        if not isinstance(name_or_factory, str):
            return name_or_factory
        try:
            return self._entries[name_or_factory]
        except KeyError:
            raise ValueError("unknown %s %r; choose from %s" % (self.kind, name_or_factory, self.names())) from None

    def make(self, name_or_factory: Union[str, Callable[..., Any]], **kwargs: Any) -> Any:
        """Instantiates an entry, dropping keyword arguments it has no field for."""
        factory = self.get(name_or_factory)
        return factory(**accepted_kwargs(factory, kwargs))


def accepted_kwargs(factory: Callable[..., Any], kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """The subset of ``kwargs`` that a dataclass factory has fields for.

    Values bound by a ``functools.partial`` preset win over ``kwargs``: a
    preset such as ``din_softmax`` keeps its normalisation whatever the
    model's default is. Factories that are not dataclasses (plain functions)
    get every argument.
    """
    target = factory
    bound = set()
    while isinstance(target, functools.partial):
        bound.update(target.keywords or {})
        target = target.func
    if not dataclasses.is_dataclass(target):
        return {key: value for key, value in kwargs.items() if key not in bound}
    names = {field.name for field in dataclasses.fields(target) if field.init}
    return {key: value for key, value in kwargs.items() if key in names and key not in bound}
