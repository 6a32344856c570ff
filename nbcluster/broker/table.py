"""A dict of int keys split into shards by the key's high bits, for tables of a million
entries (the broker's tasks by gid, a client's gids by its task id).

One dict of a million entries has two costs a broker cannot pay: growing it rehashes every
entry in one go (tens of milliseconds at 700,000, in the middle of a message), and it never
shrinks when entries leave. Keys here are handed out in order (gids, a client's task
ids), so each shard fills before the next is used: a shard's growth rehashes at most
SHARD entries, and a shard emptied is deleted, its memory with it.

A table remembers its `peak` (the most entries it held since its owner last reset it): the
broker hands freed memory back to the system once its task table fell far below it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar, overload

__all__ = ["Table"]

V = TypeVar("V")
D = TypeVar("D")
SHARD_BITS = 10   # 1024 keys a shard


class Table(Generic[V]):
    """The subset of dict[int, V] the broker uses, sharded by key >> SHARD_BITS."""

    __slots__ = ("shards", "size", "peak")

    def __init__(self) -> None:
        self.shards: dict[int, dict[int, V]] = {}
        self.size = 0
        self.peak = 0   # the most entries held since the owner last set it (see the docstring)

    def __len__(self) -> int:
        return self.size

    def __contains__(self, key: object) -> bool:
        shard = self.shards.get(key >> SHARD_BITS) if isinstance(key, int) else None
        return shard is not None and key in shard

    def __getitem__(self, key: int) -> V:
        return self.shards[key >> SHARD_BITS][key]

    def get(self, key: object, default: V | None = None) -> V | None:
        if not isinstance(key, int):
            return default
        shard = self.shards.get(key >> SHARD_BITS)
        return default if shard is None else shard.get(key, default)

    def __setitem__(self, key: int, value: V) -> None:
        shard = self.shards.get(key >> SHARD_BITS)
        if shard is None:
            shard = self.shards[key >> SHARD_BITS] = {}
        n = len(shard)
        shard[key] = value
        self.size += len(shard) - n
        if self.size > self.peak:
            self.peak = self.size

    def __delitem__(self, key: int) -> None:
        high = key >> SHARD_BITS
        shard = self.shards[high]
        del shard[key]
        self.size -= 1
        if not shard:
            del self.shards[high]

    @overload
    def pop(self, key: int) -> V: ...

    @overload
    def pop(self, key: object, default: D) -> V | D: ...

    def pop(self, key: object, default: object = KeyError) -> object:
        if isinstance(key, int) and key in self:
            value = self[key]
            del self[key]
            return value
        if default is KeyError:
            raise KeyError(key)
        return default

    def popitem(self) -> tuple[int, V]:
        """Some entry, removed (the last of the last shard: O(1))."""
        high = next(reversed(self.shards))
        shard = self.shards[high]
        item = shard.popitem()
        self.size -= 1
        if not shard:
            del self.shards[high]
        return item

    def __iter__(self) -> Iterator[int]:
        for shard in list(self.shards.values()):
            yield from shard

    def keys(self) -> Iterator[int]:
        return iter(self)

    def values(self) -> Iterator[V]:
        for shard in list(self.shards.values()):
            yield from shard.values()

    def items(self) -> Iterator[tuple[int, V]]:
        for shard in list(self.shards.values()):
            yield from shard.items()
