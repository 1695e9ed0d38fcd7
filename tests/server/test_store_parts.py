"""The store's small parts, without a database: URLs, globs, offsets, tokens, migrations."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pullwake.server.errors import BadRequest, Unauthorized
from pullwake.server.names import compile_glob
from pullwake.server.store import DEFAULT_DATABASE_URL, open_store
from pullwake.server.store.offsets import OFFSET_WIDTH, format_offset, parse_offset
from pullwake.server.store.postgres import PostgresStore
from pullwake.server.store.schema import migrations
from pullwake.server.store.sqlite import SqliteStore, split_statements
from pullwake.server.store.tokens import TokenClaims, new_secret, sign_token, verify_token


def test_open_store_picks_the_dialect_from_the_url() -> None:
    relative = open_store("sqlite:///data/pw.db")
    assert isinstance(relative, SqliteStore)
    assert relative.path == Path("data/pw.db")
    absolute = open_store("sqlite:////var/lib/pw.db")
    assert isinstance(absolute, SqliteStore)
    assert absolute.path == Path("/var/lib/pw.db")
    default = open_store(DEFAULT_DATABASE_URL)
    assert isinstance(default, SqliteStore)
    assert default.path == Path(".pullwake/pullwake.db")
    for url in (
        "postgresql://u:p@127.0.0.1:5432/db",
        "postgres://u@localhost/db",
        "postgresql:///db",
    ):
        store = open_store(url)
        assert isinstance(store, PostgresStore)
        assert "p@" not in repr(store)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "pullwake.db",
        "sqlite://",
        "sqlite:///",
        "sqlite://host/file.db",
        "sqlite:///:memory:",
        "sqlite:///dir/",
        "sqlite:///f.db?mode=ro",
        "mysql://u@h/db",
        "postgresql://[broken",
        "postgresql://u@h/db?no_such_option=1",
    ],
)
def test_open_store_refuses_bad_urls(url: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        open_store(url)


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("events/*", "events/a", True),
        ("events/*", "events/a/b", False),
        ("events/*", "events", False),
        ("events/**", "events", True),
        ("events/**", "events/a/b/c", True),
        ("events/**", "eventsx/a", False),
        ("**/leaf", "leaf", True),
        ("**/leaf", "a/b/leaf", True),
        ("**/leaf", "a/leafy", False),
        ("a/**/b/**/c", "a/b/c", True),
        ("a/**/b/**/c", "a/x/b/y/z/c", True),
        ("a/**/b/**/c", "a/x/c", False),
        ("*/x", "a/x", True),
        ("*/x", "x", False),
        ("ev*/a", "events/a", True),
        ("ev*/a", "xevents/a", False),
        ("**", "anything/at/all", True),
        ("a.b/c", "aXb/c", False),
    ],
)
def test_glob_semantics(pattern: str, path: str, matches: bool) -> None:
    assert compile_glob(pattern).matches(path) is matches


@given(st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1))
def test_offsets_sort_like_positions(a: int, b: int) -> None:
    fa, fb = format_offset(a), format_offset(b)
    assert len(fa) == len(fb) == OFFSET_WIDTH
    assert (fa < fb) == (a < b)
    assert parse_offset(fa) == a


@pytest.mark.parametrize("offset", ["", "-1", "now", "1", "x" * OFFSET_WIDTH, "１" * OFFSET_WIDTH])
def test_parse_offset_refuses_what_it_did_not_mint(offset: str) -> None:
    with pytest.raises(BadRequest) as exc:
        parse_offset(offset)
    assert exc.value.code == "INVALID_OFFSET"


def test_tokens_verify_and_refuse_tampering() -> None:
    secret = new_secret()
    claims = TokenClaims("sub", 3, "wake-1", "worker")
    token = sign_token(secret, claims)
    assert verify_token(secret, token) == claims
    prefix, payload, signature = token.split(".")
    other_payload = sign_token(secret, TokenClaims("sub", 4, "wake-1", "worker")).split(".")[1]
    for bad in (
        sign_token(new_secret(), claims),  # another store's secret
        f"{prefix}.{other_payload}.{signature}",  # payload swapped
        f"{prefix}.{payload}.",
        f"v0.{payload}.{signature}",
        "a.b",
        "é",
    ):
        with pytest.raises(Unauthorized) as exc:
            verify_token(secret, bad)
        assert exc.value.code == "INVALID_TOKEN"


def test_migrations_are_numbered_and_split_into_statements() -> None:
    versions = {}
    for dialect in ("sqlite", "postgres"):
        found = migrations(dialect)
        versions[dialect] = [m.version for m in found]
        assert versions[dialect] == sorted(set(versions[dialect]))
        assert versions[dialect][0] == 1
    # Both dialects ship the same migrations (numbers may leave gaps: 0003 before 0002).
    assert versions["sqlite"] == versions["postgres"]
    statements = split_statements(migrations("sqlite")[0].sql)
    assert statements[0].splitlines()[-1].startswith(")")
    assert all(s.endswith(";") for s in statements)
    assert any("CREATE TABLE streams" in s for s in statements)
