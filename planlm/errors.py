"""The one error type that the CLI turns into a one-line message and a non-zero exit."""

import math


class PlanlmError(ValueError):
    """Bad input or an artifact that does not fit. The message says what is wrong and how to fix it."""


def raise_if_problems(problems: list[str], what: str) -> None:
    """Raise one PlanlmError listing every problem found by a ``validate_*`` function (STYLE.md rule 5)."""
    if problems:
        if len(problems) == 1:
            raise PlanlmError(f"{what}: {problems[0]}")
        raise PlanlmError(f"{what}: " + "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1)))


def check_finite(problems: list[str], **values: float | None) -> None:
    """Add a problem for every given number that is NaN or infinite (``--optim.lr nan`` passes ``lr <= 0``)."""
    for name, v in values.items():
        if v is not None and isinstance(v, float) and not math.isfinite(v):
            problems.append(f"{name} must be a finite number (got {v})")


def check_max_steps(problems: list[str], max_steps: int, name: str = "max_steps") -> None:
    """-1 means "the full epochs"; 0 or below -1 is refused rather than read as "no limit" or "no training"."""
    if max_steps == 0 or max_steps < -1:
        problems.append(f"{name} must be positive, or -1 for the full epochs (got {max_steps})")
