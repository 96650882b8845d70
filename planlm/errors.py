"""The one error type that the CLI turns into a one-line message and a non-zero exit."""


class PlanlmError(ValueError):
    """Bad input or an artifact that does not fit. The message says what is wrong and how to fix it."""


def raise_if_problems(problems: list[str], what: str) -> None:
    """Raise one PlanlmError listing every problem found by a ``validate_*`` function (STYLE.md rule 5)."""
    if problems:
        if len(problems) == 1:
            raise PlanlmError(f"{what}: {problems[0]}")
        raise PlanlmError(f"{what}: " + "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1)))
