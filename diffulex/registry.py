"""Name → class registries for pluggable components.

Strategies, models and samplers register themselves with a decorator in their own
module; importing :mod:`diffulex.strategy` (or :mod:`diffulex.models`) runs those
decorators. A lookup of an unknown name is an error that lists what is registered:
nothing falls back silently.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of classes (or factories) filled by decorators."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, *names: str) -> Callable[[T], T]:
        """Decorator: register the decorated object under every name given."""
        if not names:
            raise ValueError(f"{self.kind}.register() needs at least one name")

        def decorate(obj: T) -> T:
            for name in names:
                existing = self._entries.get(name)
                if existing is not None and existing is not obj:
                    raise ValueError(
                        f"{self.kind}: name {name!r} is already registered to {existing!r}; "
                        f"pick another name for {obj!r}"
                    )
                self._entries[name] = obj
            return obj

        return decorate

    def get(self, name: str) -> T:
        """Return the entry for ``name`` or raise a ValueError listing the known names."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none: was diffulex.strategy imported?)"
            raise ValueError(
                f"{self.kind}: no entry named {name!r}; registered names: {known}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def names(self) -> list[str]:
        return sorted(self._entries)


# Strategy components, keyed by strategy name (see diffulex/strategy/).
AutoReq: Registry = Registry("AutoReq")
AutoScheduler: Registry = Registry("AutoScheduler")
AutoKVCacheManager: Registry = Registry("AutoKVCacheManager")
AutoModelRunner: Registry = Registry("AutoModelRunner")
# Model families, keyed by family name (see diffulex/models/).
AutoModel: Registry = Registry("AutoModel")
# Samplers, keyed by sampling mode / strategy (see diffulex/sampling/).
AutoSampler: Registry = Registry("AutoSampler")
