"""Print pip constraints pinning every direct dependency of planlm to its lower bound (``name>=X`` -> ``name==X``).

The direct dependencies are pyproject.toml's [project.dependencies] and the ``test`` extra. Each must carry a ``>=``
lower bound (an extra upper bound ``,<Y`` is allowed and ignored here), so that every bound is one the lowest lane
(``PLANLM_LOWEST=1 bash scripts/setup.sh``, ``bash scripts/check-ranges.sh lowest``) installs and tests.
Extras are dropped: pip refuses them in constraints files.

Usage: python3 scripts/lower-bounds.py [pyproject.toml] > lowest.txt
"""

from __future__ import annotations

import re
import sys

try:
    import tomllib
except ImportError:  # Python 3.10
    try:
        import tomli as tomllib
    except ImportError:
        sys.exit("scripts/lower-bounds.py needs Python >= 3.11 (tomllib) or the tomli package")

REQUIREMENT = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)\s*(,\s*<[^,;\s]+)?")


def lower_bounds(path: str = "pyproject.toml") -> list[str]:
    with open(path, "rb") as f:
        project = tomllib.load(f)["project"]
    pins = []
    for req in project["dependencies"] + project["optional-dependencies"]["test"]:
        m = REQUIREMENT.fullmatch(req.strip())
        if m is None:
            sys.exit(f"{path}: {req!r} is not of the form 'name>=X' (every direct dependency needs a tested lower bound)")
        pins.append(f"{m[1]}=={m[3]}")
    return pins


if __name__ == "__main__":
    print("\n".join(lower_bounds(*sys.argv[1:])))
