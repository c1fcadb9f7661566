"""Per-size caches in one place: a thread-safe LRU keyed by what makes an entry valid.

Backends keep per-size artifacts here: the mask tokens and first-block queries per token grid
(H', W'), the triton backend's latent positional embeddings per latent grid and its CUDA graphs
per input shape. An entry is made at most once per key while it stays cached (made under the
cache's lock), and the least recently used entry goes when the cache is full.
"""
from __future__ import annotations

import numbers
import threading
from collections import OrderedDict
from typing import Callable, Hashable, TypeVar

T = TypeVar("T")


class SizeCache:
    """LRU of at most cache_size entries; get_or_make(key, make) is atomic (thread-safe)."""

    def __init__(self, cache_size: int = 8):
        if isinstance(cache_size, bool) or not isinstance(cache_size, numbers.Integral) or cache_size < 1:
            raise ValueError(f"cache_size must be an int >= 1, got {cache_size!r}")
        self.cache_size = int(cache_size)
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.RLock()  # re-entrant: make() may read another entry of this cache

    def get_or_make(self, key: Hashable, make: Callable[[], T]) -> T:
        """The entry for key, made by make() on a miss (the oldest entry is evicted if full)."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            value = make()
            self._entries[key] = value
            while len(self._entries) > self.cache_size:
                self._entries.popitem(last=False)
            return value

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def keys(self) -> list:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
