"""Generated requests against every route of a real server: never a 5xx, never a hang.

Hypothesis throws methods, paths (raw and percent-encoded, with ``..``, empty segments,
control characters, unicode), query strings, headers and bodies (random bytes and JSON shaped
like our request bodies) at a ``pullwake server`` process on SQLite and on PostgreSQL. Each
answer must be below 500 (no route answers 5xx to bad input: clients retry those) and, when it is an
error, JSON with a code and a message. Every request is bounded by the client's timeout; the
server's long-poll timeout is short so long-polls answer quickly. After the run the server must
still answer, every row the run could have touched must read back below 500, and the server
must not have logged an unexpected error.

JSON bodies draw their text from the whole of Unicode, lone surrogates included (sent as
``\\udXXX`` escapes, which is how a client can put one on the wire), numbers that overflow a
double (``1e999``), and nesting just below, at and above every limit (the control-body depth,
the interpreter's recursion limit). Stalled and slow sockets are
``tests/server/test_connection_limits.py``'s part.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from tests.fixtures.servers import ServerFactory, ServerProcess

SUBS = "/v1/stream/__ds/subscriptions"
KNOWN_STREAMS = ["events/a", "wake/w1", "text/t", "bin/b", "nope/x"]
KNOWN_IDS = ["s1", "r1", "w1", "missing"]

segment_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=12
)
segment = st.one_of(
    st.sampled_from(["a", "events", "wake", "__ds", "..", ".", "", "%2F", "%00", "*", "**"]),
    segment_text,
)
raw_path = st.lists(segment, min_size=0, max_size=4).map("/".join)
stream_path = st.one_of(st.sampled_from(KNOWN_STREAMS), raw_path)
ident = st.one_of(st.sampled_from(KNOWN_IDS), segment_text)


def encoded(path: str, encode: bool) -> str:
    return quote(path, safe="/") if encode else path


@st.composite
def paths(draw: st.DrawFn) -> str:
    encode = draw(st.booleans())
    sp = encoded(draw(stream_path), encode)
    sid = encoded(draw(ident), encode)
    action = draw(
        st.sampled_from(["streams", "claim", "ack", "release", "callback", "nonsense", ""])
    )
    return str(
        draw(
            st.sampled_from(
                [
                    f"/v1/stream/{sp}",
                    f"{SUBS}/{sid}",
                    f"{SUBS}/{sid}/{action}",
                    f"{SUBS}/{sid}/streams/{sp}",
                    "/v1/stream/__ds/jwks.json",
                    f"/v1/stream/__ds/{sp}",
                    "/v1/runners",
                    f"/v1/runners/{sid}",
                    f"/v1/runners/{sid}/heartbeat",
                    f"/v1/runners/{sid}/health",
                    "/healthz",
                    "/metrics",
                    f"/{sp}",
                ]
            )
        )
    )


offsets = st.one_of(
    st.sampled_from(["-1", "now", "0" * 20, "9" * 20, "", "abc", "-2", "00000000000000000001"]),
    st.text(max_size=30),
)
#: Any code point, lone surrogates and NUL included.
any_character = st.one_of(
    st.characters(codec=None, categories=None),
    st.integers(min_value=0xD800, max_value=0xDFFF).map(chr),
    st.just("\x00"),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.text(alphabet=any_character, max_size=8),
    offsets,
    stream_path,
)
FIELDS = [
    "type",
    "pattern",
    "streams",
    "wake_stream",
    "lease_ttl_ms",
    "description",
    "worker",
    "wake_id",
    "generation",
    "acks",
    "done",
    "id",
    "label",
    "lease_ms",
    "wake_stream_offset",
    "diagnostics",
    "stream",
    "offset",
]
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(FIELDS), inner, max_size=6),
    ),
    max_leaves=12,
)
#: Nesting depths around every limit: the control-body depth (32) and the recursion limit.
DEPTHS = [1, 30, 31, 32, 33, 64, 500, 980, 990, 999, 1000, 1001, 3000]


@st.composite
def hostile_json(draw: st.DrawFn) -> bytes:
    """JSON text Python's parser reads but strict JSON cannot carry: overflow, deep nesting."""
    number = draw(st.sampled_from(["1e999", "-1e999", "1E400", "2e308", "1e308", "-0.0"]))
    depth = draw(st.sampled_from(DEPTHS))
    leaf = draw(st.sampled_from([number, '"\\ud800"', '"\\udfff x"', '"\\u0000"', "1"]))
    nested_object = '{"d":' * depth + leaf + "}" * depth
    nested_array = "[" * depth + leaf + "]" * depth
    shape = draw(
        st.sampled_from(
            [
                "{leaf}",
                "[{leaf}]",
                "{nested_array}",
                '{{"lease_ms": 5000, "diagnostics": {nested_object}}}',
                '{{"lease_ms": 5000, "diagnostics": {{"v": {leaf}}}}}',
                '{{"id": "r1", "label": {leaf}}}',
                '{{"type": "pull-wake", "pattern": "events/*", "wake_stream": "wake/w1", '
                '"description": {leaf}}}',
                '{{"worker": {leaf}}}',
            ]
        )
    )
    text = shape.format(leaf=leaf, nested_object=nested_object, nested_array=nested_array)
    return text.encode()


bodies = st.one_of(
    st.none(),
    st.binary(max_size=64),
    json_values.map(lambda v: json.dumps(v).encode()),
    hostile_json(),
    st.just(b'{"type":"pull-wake","pattern":"events/*","wake_stream":"wake/w1"}'),
    st.just(b"[]"),
)


@st.composite
def requests(draw: st.DrawFn, tokens: list[str]) -> dict[str, Any]:
    headers: dict[str, str] = {}
    content_type = draw(
        st.sampled_from(
            [None, "application/json", "text/plain", "application/octet-stream", "x", "a/b; q=1"]
        )
    )
    if content_type is not None:
        headers["content-type"] = content_type
    auth = draw(st.sampled_from([None, "Bearer junk", "Bearer", "Basic x", *tokens]))
    if auth is not None:
        headers["authorization"] = auth
    if draw(st.booleans()):
        headers[draw(st.sampled_from(["stream-ttl", "if-none-match", "stream-seq"]))] = draw(
            st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=10)
        )
    params = draw(
        st.dictionaries(st.sampled_from(["offset", "live", "cursor", "x"]), offsets, max_size=3)
    )
    if draw(st.booleans()):
        params["live"] = draw(st.sampled_from(["sse", "long-poll", "bogus"]))
    return {
        "method": draw(st.sampled_from(["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH"])),
        "path": draw(paths()),
        "params": params,
        "headers": headers,
        "content": draw(bodies),
    }


#: Routes that store what their body says, as the admin would call them.
STORING_ROUTES = [
    ("POST", "/v1/stream/events/a"),
    ("PUT", "/v1/stream/events/fresh"),
    ("POST", "/v1/stream/wake/w1"),
    ("POST", "/v1/runners"),
    ("POST", "/v1/runners/r1/heartbeat"),
    ("PUT", f"{SUBS}/s2"),
    ("POST", f"{SUBS}/s1/claim"),
]
#: Cursors and offsets with digits that are not ASCII.
FOREIGN_DIGITS = ["²", "٣", "1²", "１２", "߃", "-1", "1" * 19]


@st.composite
def well_aimed(draw: st.DrawFn, admin: str | None) -> dict[str, Any]:
    """A request that passes routing and auth, so its hostile part reaches the store."""
    headers = {"content-type": "application/json"}
    if admin:
        headers["authorization"] = f"Bearer {admin}"
    if draw(st.booleans()):
        method, path = draw(st.sampled_from(STORING_ROUTES))
        content = draw(st.one_of(hostile_json(), json_values.map(lambda v: json.dumps(v).encode())))
        return {
            "method": method,
            "path": path,
            "params": {},
            "headers": headers,
            "content": content,
        }
    params = {
        "offset": draw(st.sampled_from(["-1", "now", *FOREIGN_DIGITS])),
        "live": draw(st.sampled_from(["long-poll", "sse"])),
        "cursor": draw(st.sampled_from(FOREIGN_DIGITS)),
    }
    path = f"/v1/stream/{draw(st.sampled_from(KNOWN_STREAMS))}"
    return {"method": "GET", "path": path, "params": params, "headers": headers, "content": None}


def seed(client: httpx.Client, auth: dict[str, str]) -> list[str]:
    """Create streams, a subscription with a live claim; return auth headers worth trying."""
    json_type = {"content-type": "application/json", **auth}
    for path in ("events/a", "wake/w1"):
        client.put(f"/v1/stream/{path}", headers=json_type)
    client.put("/v1/stream/text/t", headers={"content-type": "text/plain", **auth})
    client.put("/v1/stream/bin/b", headers={"content-type": "application/octet-stream", **auth})
    body = {"type": "pull-wake", "pattern": "events/*", "wake_stream": "wake/w1"}
    assert client.put(f"{SUBS}/s1", json=body, headers=auth).status_code == 201
    client.post("/v1/stream/events/a", headers=json_type, content="1")
    won = client.post(f"{SUBS}/s1/claim", json={"worker": "w1"}, headers=auth).json()
    client.post("/v1/runners", json={"id": "r1", "wake_stream": "wake/w1"}, headers=auth)
    return [f"Bearer {won['token']}"]


def no_constants(name: str) -> Any:
    raise AssertionError(f"the server wrote {name}, which is not JSON")


def check(response: httpx.Response, request: dict[str, Any]) -> None:
    status = response.status_code
    assert status < 500, (request, status, response.text)
    if status >= 400 and request["method"] != "HEAD":
        assert response.headers["content-type"].startswith("application/json"), (request, status)
        error = response.json()["error"]
        assert isinstance(error["code"], str), (request, error)
        assert error["code"], (request, error)
        assert isinstance(error["message"], str), (request, error)
        assert error["message"], (request, error)


def run_fuzz(server: ServerProcess, admin: str | None = None) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        tokens = seed(client, {"authorization": f"Bearer {admin}"} if admin else {})
        if admin:
            tokens += [f"Bearer {admin}", "Bearer runner-secret"]

        @settings(
            max_examples=250,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        @given(request=st.one_of(requests(tokens), well_aimed(admin)))
        def one(request: dict[str, Any]) -> None:
            try:
                built = client.build_request(
                    request["method"],
                    request["path"],
                    params=request["params"],
                    headers=request["headers"],
                    content=request["content"],
                )
            except (httpx.InvalidURL, UnicodeEncodeError):
                reject()  # httpx itself refuses to send this; nothing reaches the server
            try:
                response = client.send(built, stream=True)
            except httpx.LocalProtocolError:
                reject()  # h11 refuses to send it (say, a blank header value)
            try:
                if response.headers.get("content-type", "").startswith("text/event-stream"):
                    assert response.status_code == 200
                else:
                    response.read()
                    check(response, request)
            finally:
                response.close()

        one()
        assert client.get("/healthz").json() == {"status": "ok"}
        # Whatever the run stored, every row it could have touched still reads back.
        admin_auth = {"authorization": f"Bearer {admin}"} if admin else {}
        for ident in KNOWN_IDS:
            for url in (f"/v1/runners/{ident}", f"/v1/runners/{ident}/health", f"{SUBS}/{ident}"):
                answer = client.get(url, headers=admin_auth)
                assert answer.status_code < 500, (url, answer.status_code, answer.text)
        for path in KNOWN_STREAMS:
            answer = client.get(f"/v1/stream/{path}", params={"offset": "-1"}, headers=admin_auth)
            assert answer.status_code < 500, (path, answer.status_code, answer.text)
            # The run may have deleted a stream and made it again with another type.
            if answer.status_code == 200 and answer.headers["content-type"] == "application/json":
                json.loads(answer.content, parse_constant=no_constants)  # strict JSON back
    server.terminate()
    log = server.stderr_text()
    assert "unexpected error" not in log, log[-4000:]
    assert "Traceback" not in log, log[-4000:]


def test_generated_requests_never_5xx_or_hang(
    server_factory: ServerFactory, database_url: str
) -> None:
    run_fuzz(
        server_factory(database_url, args=["--long-poll-timeout", "0.2", "--keepalive", "0.2"])
    )


def test_generated_requests_with_auth_on_trio(
    server_factory: ServerFactory, database_url: str
) -> None:
    server = server_factory(
        database_url,
        backend="trio",
        args=["--long-poll-timeout", "0.2", "--keepalive", "0.2"],
        env={"PULLWAKE_ADMIN_TOKEN": "admin-secret", "PULLWAKE_RUNNER_TOKENS": "r1=runner-secret"},
    )
    run_fuzz(server, admin="admin-secret")
