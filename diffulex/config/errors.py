"""Error and normalization-note helpers shared by the config groups."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

logger = logging.getLogger("diffulex.config")


def config_error(name: str, value: Any, allowed: str, fix: str) -> ValueError:
    """A ValueError that names the field, the value, what is allowed and the fix."""
    if isinstance(value, Enum):
        value = value.value
    return ValueError(f"{name}={value!r} is invalid: allowed {allowed}. Fix: {fix}")


def coerce_enum(enum_cls: type[Enum], name: str, value: Any, fix: str = "") -> Enum:
    """Turn a string (or member) into a member of ``enum_cls`` or raise a clear error."""
    if isinstance(value, enum_cls):
        return value
    try:
        return enum_cls(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in enum_cls)
        raise config_error(name, value, f"one of {allowed}", fix or f"set {name} to one of {allowed}") from None


def check_range(name: str, value: Any, lo: float | None = None, hi: float | None = None,
                integer: bool = False) -> None:
    """Raise unless ``lo <= value <= hi`` (bounds optional) and, if asked, an int."""
    kind = "an integer" if integer else "a number"
    bad_type = isinstance(value, bool) or not isinstance(value, int if integer else (int, float))
    bounds = f" in [{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
    if bad_type or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise config_error(name, value, kind + bounds, f"set {name} to {kind}{bounds}")


def is_power_of_two(value: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0 and value & (value - 1) == 0


@dataclass
class Notes:
    """Normalizations applied while building a Config; each is logged once."""

    messages: list[str] = field(default_factory=list)
    # The same, structured: {"key", "requested", "used", "why"} (what results.json records).
    changes: list[dict[str, Any]] = field(default_factory=list)

    def changed(self, name: str, user_value: Any, new_value: Any, why: str) -> None:
        """Record that a value the user set was replaced (logged as a warning)."""
        msg = f"{name}: {user_value!r} -> {new_value!r} ({why})"
        self.messages.append(msg)
        plain = [getattr(v, "value", v) for v in (user_value, new_value)]
        self.changes.append({"key": name, "requested": plain[0], "used": plain[1], "why": why})
        logger.warning("config normalized %s", msg)
