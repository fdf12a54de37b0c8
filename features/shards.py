"""Splitting one job over several processes: the ``i/n`` spec, torchrun's RANK/WORLD_SIZE, the slice.

Used by feature extraction (``tal-extract --shard``) and pseudo-labelling (``tal-pseudo --shard``).
"""

from __future__ import annotations

import os
import re

from features.errors import StovtalError

_SPEC = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


class ShardError(StovtalError, ValueError):
    """A shard spec that is not i/n with 0 <= i < n."""


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n."""
    match = _SPEC.fullmatch(text or "")
    if not match or not int(match.group(1)) < int(match.group(2)):
        raise ShardError(f"shard {text!r}: expected i/n with 0 <= i < n, e.g. 0/4")
    return int(match.group(1)), int(match.group(2))


def shard_from_env(env=os.environ) -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) when started by torchrun with more than one process, else None."""
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        shard = parse_shard(f"{env['RANK']}/{env['WORLD_SIZE']}")
    except ShardError:
        raise ShardError(f"RANK={env['RANK']!r} WORLD_SIZE={env['WORLD_SIZE']!r}: "
                         "need 0 <= RANK < WORLD_SIZE") from None
    return shard if shard[1] > 1 else None


def shard_slice(items: list, index: int, count: int) -> list:
    """Every count-th item from the index-th: deterministic, and long and short items spread evenly."""
    return items[index::count]
