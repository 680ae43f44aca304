"""A port: the one implementation of an edge (the job transport, the SSH connector) the
console uses, swapped for a fake in tests and dry runs (``with port.use(fake): ...``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

T = TypeVar("T")


class Port(Generic[T]):
    def __init__(self, default: T) -> None:
        self._impl = default

    def get(self) -> T:
        return self._impl

    @contextmanager
    def use(self, impl: T) -> Iterator[T]:
        """``impl`` instead of the current one until the block ends (then the one before)."""
        previous, self._impl = self._impl, impl
        try:
            yield impl
        finally:
            self._impl = previous
