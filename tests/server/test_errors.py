"""The exception tree drawn at the top of server/errors.py is complete and true."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pullwake.server
from pullwake.server import errors

_NODE = re.compile(r"^( *)(?:[├└]── )?([A-Z]\w+)\b")


def _drawn_tree() -> dict[str, str | None]:
    """Return each class drawn in the docstring's tree, mapped to its drawn parent."""
    doc = errors.__doc__ or ""
    block = doc.split("::", 1)[1].lstrip("\n").split("\n\n", 2)
    lines = "\n".join(block[:2]).splitlines()
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in lines:
        match = _NODE.match(line.replace("│", " "))
        if match is None:
            continue
        prefix = line[: match.start(2)]
        depth = len(prefix)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[match.group(2)] = stack[-1][1] if stack else None
        stack.append((depth, match.group(2)))
    return parents


def _server_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(pullwake.server.__path__, "pullwake.server."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
            ):
                found[name] = value
    return found


def test_every_exception_class_of_the_server_is_drawn_under_its_base() -> None:
    drawn = _drawn_tree()
    classes = _server_exceptions()
    assert len(classes) >= 15
    assert set(classes) <= set(drawn), sorted(set(classes) - set(drawn))
    for name, cls in classes.items():
        parent = drawn[name]
        assert parent is not None
        assert parent in {base.__name__ for base in cls.__bases__}, (name, parent)


def test_the_tree_draws_nothing_that_does_not_exist() -> None:
    classes = _server_exceptions()
    roots = {"PullwakeError", "Exception"}
    assert set(_drawn_tree()) == set(classes) | roots
