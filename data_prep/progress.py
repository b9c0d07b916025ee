"""Progress bars that vanish when stderr is not a terminal, and without tqdm installed."""

from typing import Any, Iterable, Optional

try:
    from tqdm import tqdm as _tqdm
except ImportError:  # the IPU lane has no tqdm
    _tqdm = None


class _Silent:
    """The part of tqdm's interface the pipeline uses, doing nothing."""

    def __init__(self, iterable: Optional[Iterable[Any]] = None):
        self._iterable = iterable

    def __iter__(self):
        return iter(self._iterable if self._iterable is not None else ())

    def update(self, n: float = 1) -> None:
        del n

    def set_postfix_str(self, text: str) -> None:
        del text

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def progress(iterable: Optional[Iterable[Any]] = None, **kwargs):
    """Returns a tqdm bar (or a silent stand-in); ``disable=None`` hides it off a terminal."""
    if _tqdm is None:
        return _Silent(iterable)
    kwargs.setdefault("disable", None)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return _tqdm(iterable, **kwargs)
