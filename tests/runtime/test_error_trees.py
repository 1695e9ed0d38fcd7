"""Each ``errors.py`` draws its whole exception tree once, at its top, and the drawing is true.

The drawing in the module docstring is parsed (one class per line, four columns per level, as
``├──``/``└──`` draw it): every exception class of the module appears exactly once, nothing
else does, and each is drawn under one of its real base classes.
"""

from __future__ import annotations

import inspect
import re
from types import ModuleType

import pytest

from pullwake.errors import PullwakeError
from pullwake.machines import errors as machines_errors
from pullwake.runtime import errors as runtime_errors

_LINE = re.compile(r"^(?P<indent>[ │├└─]*)(?P<name>[A-Z]\w+)\b")


def drawn_tree(doc: str) -> list[tuple[str, str | None]]:
    """Return (class name, drawn parent) for each line of the drawing, in order."""
    lines = [line[4:] for line in doc.splitlines() if line.startswith("    ")]
    stack: list[str] = []
    drawn: list[tuple[str, str | None]] = []
    for line in lines:
        match = _LINE.match(line)
        if match is None:
            continue
        depth = len(match.group("indent")) // 4
        del stack[depth:]
        drawn.append((match.group("name"), stack[-1] if stack else None))
        stack.append(match.group("name"))
    return drawn


def exception_classes(module: ModuleType) -> dict[str, type[BaseException]]:
    return {
        name: value
        for name, value in vars(module).items()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == module.__name__
    }


@pytest.mark.parametrize("module", [runtime_errors, machines_errors], ids=lambda m: m.__name__)
def test_the_drawing_lists_every_exception_under_its_base(module: ModuleType) -> None:
    assert module.__doc__ is not None
    drawn = drawn_tree(module.__doc__)
    names = [name for name, _ in drawn]
    assert names[0] == "PullwakeError"
    assert len(names) == len(set(names)), "a class is drawn twice"
    classes = exception_classes(module)
    assert set(names) - {"PullwakeError"} == set(classes)
    known = {**classes, "PullwakeError": PullwakeError}
    for name, parent in drawn[1:]:
        assert parent is not None
        assert known[parent] in known[name].__bases__, f"{name} is drawn under {parent}"


def test_the_parser_sees_a_missing_class() -> None:
    doc = """Errors.

    PullwakeError
    └── ChartError
        └── DiagramError
"""
    drawn = drawn_tree(doc)
    assert drawn == [
        ("PullwakeError", None),
        ("ChartError", "PullwakeError"),
        ("DiagramError", "ChartError"),
    ]
    assert set(exception_classes(machines_errors)) - {n for n, _ in drawn}
