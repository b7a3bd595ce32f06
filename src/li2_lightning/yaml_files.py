"""Reading a YAML file of settings so that every error names the file (configs and sweep files)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml


def load_mapping(path: str | os.PathLike, what: str, accepted: str) -> dict[str, Any]:
    """The mapping in the YAML file ``path`` ({} for an empty file).

    Args:
        path: the file (it must exist).
        what: how errors name it, e.g. ``"config file"`` or ``"sweep file"``.
        accepted: what a top-level value must be, for the error when it is not a mapping.

    Raises:
        ValueError: naming the file, when it is not UTF-8 text (or holds NUL bytes), not valid YAML
            (with line and column), or not a mapping.
    """
    where = f"{what} '{path}'"
    try:
        text = Path(path).read_bytes().decode("utf-8")
        if "\x00" in text:
            raise UnicodeDecodeError("utf-8", b"", 0, 1, "NUL byte")
        value = yaml.safe_load(text)
    except UnicodeDecodeError:
        raise ValueError(f"{where} is not a text file; accepted: a YAML file of settings") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{where} is not valid YAML{at}: {problem}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where} holds a {type(value).__name__}; accepted: {accepted}")
    return value
