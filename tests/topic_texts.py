"""Texts on two topics far apart, for tests of the drift score: random 40-word runs of river
words or of systems-programming words (each text well under 400 characters)."""

from __future__ import annotations

import random

RIVERS = [
    "river",
    "bank",
    "water",
    "fish",
    "stream",
    "flood",
    "boat",
    "shore",
    "current",
    "delta",
    "rain",
    "lake",
]
CODE = [
    "algorithm",
    "compiler",
    "kernel",
    "thread",
    "mutex",
    "pointer",
    "cache",
    "register",
    "syscall",
    "socket",
]


def prose(words: list[str], count: int, seed: int) -> list[str]:
    """`count` texts of 40 words drawn from `words` with `seed`."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(40)) + "." for _ in range(count)]
