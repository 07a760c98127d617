"""Argument checks shared by the models: each error names the argument, the value and what is
expected."""
import math
import numbers
from typing import Sequence, Tuple


def is_int(value) -> bool:
    """An integer that is not a bool (``True`` is not a size)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    """A real number (NaN and inf included) that is not a bool; strings are not numbers."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive_int(owner: str, name: str, value) -> int:
    if not is_int(value) or value < 1:
        raise ValueError(f'{owner}: {name} must be a positive int, got {value!r}')
    return int(value)


def check_rate(owner: str, name: str, value) -> float:
    """A probability-like rate in [0, 1)."""
    if not is_real(value) or not 0 <= value < 1:  # NaN fails the comparison
        raise ValueError(f'{owner}: {name} must be a number in [0, 1), got {value!r}')
    return float(value)


def check_positive_real(owner: str, name: str, value) -> float:
    if not is_real(value) or not 0 < value < math.inf:
        raise ValueError(f'{owner}: {name} must be a finite number > 0, got {value!r}')
    return float(value)


def check_gate_threshold(value) -> float:
    """A real number in [0, 1] (not bool/str/NaN), as a float."""
    if not is_real(value) or not 0 <= value <= 1:  # NaN fails the comparison
        raise ValueError('MSViT: gate_threshold must be a number in [0, 1] (the gate '
                         f'probability above which a region is fine), got {value!r}')
    return float(value)


def check_fine_budget(value):
    """None, or a real number in (0, 1] (the fine fraction per image in budget mode)."""
    if value is None:
        return None
    if not is_real(value) or not 0 < value <= 1:  # NaN fails the comparison
        raise ValueError('MSViT: fine_budget must be None (threshold mode) or a number in (0, 1] '
                         f'(the share of regions kept fine in every image), got {value!r}')
    return float(value)


def check_size_pair(owner: str, name: str, value) -> Tuple[int, int]:
    """A positive int or a pair of positive ints, as a pair."""
    if is_int(value):
        sides = (value, value)
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2 and \
            all(is_int(side) for side in value):
        sides = tuple(value)
    else:
        sides = None
    if sides is None or min(sides) < 1:
        raise ValueError(f'{owner}: {name} must be a positive int or a pair of positive ints, '
                         f'got {value!r}')
    return int(sides[0]), int(sides[1])


def check_out_indices(owner: str, value, depth: int) -> list:
    """Block indices (negative counted from the end) resolved to 0..depth-1."""
    if is_int(value):
        value = [value]
    if not (isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0
            and all(is_int(i) for i in value)):
        raise ValueError(f'{owner}: out_indices must be an int or a non-empty sequence of ints '
                         f'(block indices, -1 = last), got {value!r}')
    resolved = []
    for index in value:
        block = index + depth if index < 0 else index
        if not 0 <= block < depth:
            raise ValueError(f'{owner}: out_indices contains {index}, outside a depth of {depth}')
        resolved.append(int(block))
    return resolved
