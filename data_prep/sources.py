"""Provenance of a build: size and sha256 of every source file, hashed in a background thread."""

import concurrent.futures
import hashlib
import os
from typing import Dict, Iterable, List

_CHUNK = 1 << 22


def sha256_file(path: str) -> str:
    """Returns the hex sha256 of a file (hashlib releases the GIL on large chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class SourceHasher:
    """Hashes files while the build parses them; ``entries`` waits for the results."""

    def __init__(self):
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
        self._futures: Dict[str, concurrent.futures.Future] = {}

    def prefetch(self, paths: Iterable[str]) -> None:
        """Starts hashing the given files (folders: the regular files directly inside)."""
        for path in paths:
            if not path:
                continue
            if os.path.isdir(path):
                self.prefetch(os.path.join(path, name) for name in sorted(os.listdir(path)))
            elif os.path.isfile(path) and os.path.abspath(path) not in self._futures:
                self._futures[os.path.abspath(path)] = self._pool.submit(sha256_file, path)

    def entries(self, paths: Iterable[str]) -> List[dict]:
        """Returns ``[{"path", "bytes", "sha256"}]`` for the files a build actually used."""
        self.prefetch(paths)
        return [
            {
                "path": os.path.abspath(path),
                "bytes": os.path.getsize(path),
                "sha256": self._futures[os.path.abspath(path)].result(),
            }
            for path in paths
        ]

    def close(self) -> None:
        """Stops the worker thread (pending hashes are cancelled)."""
        for future in self._futures.values():
            future.cancel()
        self._pool.shutdown(wait=True)
