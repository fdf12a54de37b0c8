"""The one reader of class-name files (``--classes``, ``--class-names``, ``--reference``).

One name per line; surrounding whitespace is stripped; blank lines and lines starting with ``#`` are skipped.
A name listed twice, a file without names or one that is not UTF-8 text is an error naming the file.
"""

from __future__ import annotations

from pathlib import Path

from features.errors import StovtalError


class ClassNamesError(StovtalError, ValueError):
    """A class-name file that cannot be used; one line naming the file."""


def read_class_names(path) -> list[str]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ClassNamesError(f"{path}: not UTF-8 text (expected one class name a line)") from None
    except OSError as exc:
        raise ClassNamesError(f"{path}: cannot read ({exc.strerror or exc})") from None
    names, seen = [], {}
    for lineno, line in enumerate(lines, 1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if name in seen:
            raise ClassNamesError(f"{path}:{lineno}: class {name!r} listed twice (first on line {seen[name]})")
        seen[name] = lineno
        names.append(name)
    if not names:
        raise ClassNamesError(f"{path}: no class names (one a line)")
    return names
