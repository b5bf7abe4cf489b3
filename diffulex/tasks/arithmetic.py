"""Arithmetic in the seed's prompt format: ``"Solve: 12 + 30."`` -> ``" 42"`` (then EOS).

A problem is held out when the crc32 of its prompt is 0 mod ``HELD_OUT_MOD``: the split is a
property of the problem, so the train stream (which rejects held-out prompts) and every
held-out set are disjoint for any seed. Sub-tasks name the operand sizes:

* ``add2`` / ``sub2`` / ``add3`` / ``add4``: both operands with exactly that many digits
  (``sub2``'s result may be negative: ``"Solve: 23 - 57."`` -> ``" -34"``);
* ``mul``: both operands in ``[0, 12]``;
* ``add``: each operand with 1 to 3 digits (the training mix), ``sub``: 1 to 2 digits.

``mark`` is the task where parallel decoding costs accuracy: ``"Mark 2 of 7 3 9."`` asks for
a mask of the items with exactly k ones (``" 101"``, ``" 110"`` or ``" 011"``, all correct, drawn
uniformly in training). Each mask digit alone is ``1`` with probability ``k / n`` but the digits
depend on each other: decoded one at a time (a high ``accept_threshold``) every answer is
valid; decoded in parallel from their marginals (a threshold below ``k / n``) they come out
as all ones, which is wrong. It is the joint-versus-marginal failure of parallel decoding in
its smallest form. (Plain additions, ``add4`` included, are decided in one forward by these
models, so they show no such cost.)
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass

HELD_OUT_MOD = 8
_NUMBER = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Problem:
    """One prompt, its reference value and the completion the models are trained on."""

    prompt: str
    value: int  # the result; for ``mark``: k, the number of ones the mask must have
    subtask: str
    answer: str = ""  # the trained answer when it is not ``str(value)`` (``mark``: one valid mask)
    items: int = 0  # ``mark``: n, the mask's length

    @property
    def completion(self) -> str:
        """What follows the prompt: a space and the answer (the EOS token comes after it)."""
        return f" {self.reference}"

    @property
    def reference(self) -> str:
        return self.answer or str(self.value)


def _operand(rng: random.Random, digits: int | tuple[int, int]) -> int:
    """A number with exactly ``digits`` digits, or with a digit count drawn from ``(lo, hi)``."""
    if isinstance(digits, tuple):
        digits = rng.randint(*digits)
    return rng.randint(0, 9) if digits == 1 else rng.randint(10 ** (digits - 1), 10 ** digits - 1)


# subtask -> (operator, operand size: exact digit count, (lo, hi) digit counts, or "small")
SUBTASKS: dict[str, tuple[str, object]] = {
    "add": ("+", (1, 3)), "sub": ("-", (1, 2)), "mul": ("*", "small"),
    "add2": ("+", 2), "sub2": ("-", 2), "add3": ("+", 3), "add4": ("+", 4), "mark": ("mark", None),
}
# The training stream: subtask -> weight.
TRAIN_MIX: dict[str, float] = {"add": 0.3, "sub": 0.2, "mul": 0.1, "add4": 0.15, "mark": 0.25}
MARK_ITEMS = (3, 8)  # n: items in a mark prompt (k from 1 to n - 1)
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def make_problem(subtask: str, rng: random.Random) -> Problem:
    """One problem of ``subtask`` drawn from ``rng`` (train or held out: not filtered)."""
    if subtask not in SUBTASKS:
        raise ValueError(f"unknown arithmetic subtask {subtask!r}; known: {', '.join(SUBTASKS)}")
    op, size = SUBTASKS[subtask]
    if op == "mark":
        n = rng.randint(*MARK_ITEMS)
        k = rng.randint(1, n - 1)
        items = " ".join(str(d) for d in rng.sample(range(10), n))
        ones = set(rng.sample(range(n), k))
        mask = "".join("1" if i in ones else "0" for i in range(n))
        return Problem(f"Mark {k} of {items}.", k, subtask, answer=mask, items=n)
    if size == "small":
        a, b = rng.randint(0, 12), rng.randint(0, 12)
    else:
        a, b = _operand(rng, size), _operand(rng, size)
    return Problem(f"Solve: {a} {op} {b}.", _OPS[op](a, b), subtask)


def is_held_out(prompt: str) -> bool:
    """Whether ``prompt`` belongs to the held-out split (never trained on)."""
    return zlib.crc32(prompt.encode()) % HELD_OUT_MOD == 0


def sample_train(rng: random.Random, mix: dict[str, float] | None = None) -> Problem:
    """One training problem: a subtask drawn by ``mix`` weight, held-out prompts rejected."""
    mix = mix or TRAIN_MIX
    names, weights = list(mix), list(mix.values())
    while True:
        p = make_problem(rng.choices(names, weights)[0], rng)
        if not is_held_out(p.prompt):
            return p


def held_out(subtask: str, n: int, seed: int = 0) -> list[Problem]:
    """``n`` distinct held-out problems of ``subtask`` (seeded; the same list for the same args)."""
    if n < 1:
        raise ValueError(f"held_out: n={n}, expected at least 1")
    rng = random.Random(zlib.crc32(f"{subtask}:{seed}".encode()))
    out: dict[str, Problem] = {}
    for _ in range(200 * n + 10_000):
        p = make_problem(subtask, rng)
        if is_held_out(p.prompt):
            out.setdefault(p.prompt, p)
            if len(out) == n:
                return list(out.values())
    raise ValueError(f"held_out: subtask {subtask!r} has fewer than {n} distinct held-out problems "
                     f"(found {len(out)})")


def first_number(text: str) -> int | None:
    """The first integer in ``text`` (a leading minus sign included), or None."""
    m = _NUMBER.search(text)
    return int(m.group()) if m else None


_MASK = re.compile(r"[01]+")


def is_correct(output: str, problem: Problem) -> bool:
    """Exact match of the first number of the output with the value; for ``mark``: the first run
    of 0/1 digits has the item count as length and exactly k ones."""
    if problem.subtask == "mark":
        m = _MASK.search(output)
        return bool(m) and len(m.group()) == problem.items and m.group().count("1") == problem.value
    return first_number(output) == problem.value
