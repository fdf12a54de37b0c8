"""The order in which the official ActivityNet evaluator visits tied detections, reproduced exactly.

The official ``Evaluation/eval_detection.py`` (run with Python 2.7 and numpy 1.16) ranks each class's
detections with ``scores.argsort()[::-1]`` and each detection's ground-truth candidates with
``tiou.argsort()[::-1]``. Both leave the order of equal values to numpy's default sort, an unstable
introsort, applied to arrays in an order that Python 2.7's dict iteration gave the prediction file's videos.
Equal scores are common (rounded scores, sample submissions that score everything 1.0), and their order
changes AP. This module ports the two pieces so that the result does not depend on the numpy or Python in
use (numpy >= 1.26 on AVX-512 machines, for one, sorts differently):

* :func:`numpy116_argsort` -- ``np.argsort(values, kind="quicksort")`` for float64 as numpy 1.16 computed it
  (numpy's C introsort of that era, unchanged up to 1.25 for argsort on x86): median-of-3 quicksort down to
  16 elements, insertion sort below, heapsort past a depth limit of 2*floor(log2(n)). NaN sorts last.
* :func:`py27_dict_order` -- the iteration order of a Python 2.7 dict whose string keys were inserted in a
  given order (``json.load`` inserts them in file order): 64-bit string hash, open addressing with the
  perturbed probe, and the table's growth (x4, x2 above 50,000 keys) when two thirds full.

Both are written from the algorithms' descriptions in numpy's and CPython's sources; they are checked against
numpy 1.24 (same algorithm) on recorded inputs in the tests.
"""

from __future__ import annotations

import numpy as np

SMALL_SORT = 16  # numpy sorts at most this many elements (pr - pl <= 15) by insertion
_MASK64 = (1 << 64) - 1


# --------------------------------------------------------------------------------------------- numpy 1.16 argsort
def numpy116_argsort(values) -> np.ndarray:
    """Indices that sort ``values`` ascending, as ``np.argsort(values)`` (kind "quicksort") did in numpy 1.16."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    n = len(values)
    if n < 2:
        return np.arange(n, dtype=np.int64)
    # Only comparisons matter: replace the floats by integer ranks (NaN above everything, all NaNs equal, as
    # numpy's NaN-aware "less than" treats them), which Python compares much faster.
    nan = np.isnan(values)
    key = np.empty(n, dtype=np.int64)
    finite = np.flatnonzero(~nan)
    key[finite] = np.unique(values[finite], return_inverse=True)[1].reshape(-1)
    key[nan] = len(finite) + 1
    order = _introsort(key.tolist())
    return np.asarray(order, dtype=np.int64)


def _introsort(v: list) -> list:
    """numpy's aquicksort on the keys ``v`` (a port, see the module docstring); returns the index order."""
    t = list(range(len(v)))
    lo, hi = 0, len(v) - 1
    depth_left = 2 * (len(v).bit_length() - 1)  # 2 * floor(log2(n))
    pending: list[tuple[int, int, int]] = []
    while True:
        if depth_left < 0:
            _heapsort(v, t, lo, hi - lo + 1)
        else:
            while hi - lo > SMALL_SORT - 1:
                lo, hi, depth_left = _partition(v, t, lo, hi, depth_left, pending)
            _insertion_sort(v, t, lo, hi)
        if not pending:
            return t
        lo, hi, depth_left = pending.pop()


def _partition(v, t, lo, hi, depth_left, pending):
    """One median-of-three partition of t[lo..hi]; pushes the larger side, returns the smaller to go on with."""
    mid = lo + ((hi - lo) >> 1)
    if v[t[mid]] < v[t[lo]]:
        t[mid], t[lo] = t[lo], t[mid]
    if v[t[hi]] < v[t[mid]]:
        t[hi], t[mid] = t[mid], t[hi]
    if v[t[mid]] < v[t[lo]]:
        t[mid], t[lo] = t[lo], t[mid]
    pivot = v[t[mid]]
    left, right = lo, hi - 1
    t[mid], t[right] = t[right], t[mid]  # the pivot waits at hi - 1; t[lo] <= pivot <= t[hi] are sentinels
    while True:
        left += 1
        while v[t[left]] < pivot:
            left += 1
        right -= 1
        while pivot < v[t[right]]:
            right -= 1
        if left >= right:
            break
        t[left], t[right] = t[right], t[left]
    t[left], t[hi - 1] = t[hi - 1], t[left]  # the pivot to its place
    depth_left -= 1
    if left - lo < hi - left:
        pending.append((left + 1, hi, depth_left))
        return lo, left - 1, depth_left
    pending.append((lo, left - 1, depth_left))
    return left + 1, hi, depth_left


def _insertion_sort(v, t, lo, hi) -> None:
    for i in range(lo + 1, hi + 1):
        item = t[i]
        key = v[item]
        j = i
        while j > lo and key < v[t[j - 1]]:
            t[j] = t[j - 1]
            j -= 1
        t[j] = item


def _heapsort(v, t, lo, n) -> None:
    """numpy's aheapsort on t[lo:lo+n] (1-based heap positions k live at t[lo + k - 1])."""
    base = lo - 1

    def sift(item, i, size):
        j = 2 * i
        while j <= size:
            if j < size and v[t[base + j]] < v[t[base + j + 1]]:
                j += 1
            if v[item] < v[t[base + j]]:
                t[base + i] = t[base + j]
                i, j = j, 2 * j
            else:
                break
        t[base + i] = item

    for start in range(n >> 1, 0, -1):
        sift(t[base + start], start, n)
    for size in range(n - 1, 0, -1):
        item = t[base + size + 1]
        t[base + size + 1] = t[base + 1]
        sift(item, 1, size)


def official_descending(scores) -> np.ndarray:
    """``scores.argsort()[::-1]`` as the official evaluator computed it: descending, ties in numpy 1.16's order."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(np.unique(scores)) == len(scores) and not np.isnan(scores).any():
        return np.argsort(-scores, kind="stable")  # no ties: every correct sort agrees (and this one is fast)
    return numpy116_argsort(scores)[::-1].copy()


# --------------------------------------------------------------------------------------------- Python 2.7 dicts
def py27_str_hash(text: str) -> int:
    """Python 2.7's hash of a (unicode) string on a 64-bit build, as an unsigned 64-bit number."""
    if not text:
        return 0
    x = (ord(text[0]) << 7) & _MASK64
    for ch in text:
        x = ((1000003 * x) & _MASK64) ^ ord(ch)
    x ^= len(text)
    return _MASK64 - 1 if x == _MASK64 else x  # -1 is reserved: CPython uses -2


def py27_dict_order(keys) -> list:
    """The iteration order of a Python 2.7 dict built by inserting the distinct string ``keys`` in order."""
    size, used = 8, 0
    table: list = [None] * size
    for key in keys:
        entry = (key, py27_str_hash(key))
        table[_free_slot(table, size - 1, entry[1])] = entry
        used += 1
        if used * 3 >= size * 2:  # two thirds full (no deletions: fill == used): grow and re-insert in slot order
            target = (2 if used > 50000 else 4) * used
            size = 8
            while size <= target:
                size <<= 1
            old, table = table, [None] * size
            for item in old:
                if item is not None:
                    table[_free_slot(table, size - 1, item[1])] = item
    return [item[0] for item in table if item is not None]


def _free_slot(table: list, mask: int, h: int) -> int:
    """CPython 2.7's probe sequence: i = 5*i + 1 + perturb, perturb >>= 5, until a free slot."""
    i = h & mask
    perturb = h
    while table[i & mask] is not None:
        i = (5 * i + 1 + perturb) & _MASK64
        perturb >>= 5
    return i & mask
