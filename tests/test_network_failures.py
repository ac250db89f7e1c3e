"""The failure matrix of the tools that reach the network: for each, against one fake server on loopback that
answers as its provider documents, a success, a missing key, a 429 and then success, a 5xx that stays, a timeout, an
answer too large, a redirect to a host its manifest does not list, and a malformed answer. Each failure is a
ToolError (a ToolTimeout for the timeout) whose message says what went wrong, never another exception.

A missing key does not apply to wikipedia and arxiv_search: their APIs are open and their endpoint variables have
defaults. For web_search it is no provider configured (one row a provider), for wolfram_alpha WOLFRAM_APP_ID unset,
for http_get HTTP_GET_HOSTS, for exchange_rate RATES_URL.
"""

from __future__ import annotations

import contextvars
import http.server
import json
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from engine.flow.manifest import load_tools
from engine.kernel import network
from engine.kernel.tool_code import ToolError, ToolTimeout, load_entry, reachable, running
from engine.resources import data_dir

Reply = tuple[str, bytes]  # the Content-Type and body of a 200
JSON = "application/json; charset=utf-8"


def as_json(data: Any) -> Reply:
    return JSON, json.dumps(data).encode()


class Fake(http.server.BaseHTTPRequestHandler):
    """Any provider: each request follows the next step of `plan` ("ok" when none is left), answering `answer`'s
    reply for its path and query on "ok"; `asked` keeps each request's Host header, path and query."""

    plan: ClassVar[list[str]] = []
    asked: ClassVar[list[tuple[str, str, dict[str, str]]]] = []
    answer: ClassVar[Callable[[str, dict[str, str]], Reply]]
    malformed: ClassVar[Reply]
    release: ClassVar[threading.Event] = threading.Event()

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        Fake.asked.append((self.headers.get("Host", ""), url.path, query))
        how = Fake.plan.pop(0) if Fake.plan else "ok"
        if how == "429":
            self.send(429, "text/plain", b"Too Many Requests", {"Retry-After": "0"})
        elif how == "503":
            self.send(503, "text/plain", b"Service Unavailable")
        elif how == "slow":  # no answer until the test is over (the client gives up first)
            Fake.release.wait(5)
            self.close_connection = True
        elif how == "big":
            self.send(200, Fake.answer(url.path, query)[0], b" " * (network.MAX_RESPONSE + 10))
        elif how == "redirect":
            self.send(302, "text/plain", b"", {"Location": f"http://localhost:{self.server.server_port}{self.path}"})
        elif how == "malformed":
            self.send(200, *Fake.malformed)
        else:
            self.send(200, *Fake.answer(url.path, query))

    def send(self, status: int, kind: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": kind, "Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@dataclass(frozen=True)
class Row:
    """A network tool in the matrix: how to point it at the fake (`env`, given the fake's base URL), a call and
    what it gives (`expected`, given the base URL) after `requests` requests, the fake's success and malformed
    answers, and the variable whose absence is the missing key (None: no key applies)."""

    id: str
    tool: str
    entry: str
    env: Callable[[str], dict[str, str]]
    arguments: dict[str, Any]
    answer: Callable[[str, dict[str, str]], Reply]
    expected: Callable[[str], Any]
    malformed: Reply
    malformed_error: str
    missing: tuple[str, str] | None = None  # the variable unset, the error it gives
    requests: int = 1

    def __str__(self) -> str:
        return self.id


FEED = b"""<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title type="html">ArXiv Query: search_query=all:small models</title>
<entry><id>http://arxiv.org/abs/2401.00001v1</id><published>2024-01-02T18:00:00Z</published>
<title>Small Models, Structured Outputs</title><summary>Constrained decoding makes small models reliable.</summary>
<author><name>A. Author</name></author></entry></feed>"""
WOLFRAM = """Query:
"integrate x^2 sin x"

Input interpretation:
integrate x^2 sin(x) dx

Result:
integral x^2 sin(x) dx = (2 - x^2) cos(x) + 2 x sin(x) + constant

Wolfram|Alpha website result for "integrate x^2 sin x":
https://www.wolframalpha.com/input?i=integrate+x%5E2+sin+x
"""
PAGE = b"""<!doctype html><html><head><title>The  Guide</title><style>p { color: red }</style></head>
<body><h1>Guide</h1><p>Hello <b>world</b>!</p><ul><li>Step one</li><li>Step  two</li></ul>
<script>track("visit")</script><noscript>Enable JavaScript</noscript></body></html>"""


def wikipedia(path: str, query: dict[str, str]) -> Reply:
    if query.get("prop") == "extracts":
        return as_json({"batchcomplete": True, "query": {"pages": [
            {"pageid": 1, "ns": 0, "title": "Austin, Texas", "extract": "Austin is the capital of Texas."}]}})
    return as_json({"batchcomplete": True, "query": {"searchinfo": {"totalhits": 1}, "search": [
        {"ns": 0, "title": "Austin, Texas", "pageid": 1}]}})


SEARCH_RESULT = {"query": "flowrun", "results": [{"title": "Flowrun", "url": "https://example.org/flowrun",
                                                  "snippet": "A workflow engine."}]}
HTML_ERROR = ("text/html; charset=utf-8", b"<html><body>Quota exceeded</body></html>")
ROWS = [
    Row("wikipedia", "wikipedia", "wikipedia.py:wikipedia", lambda base: {"WIKIPEDIA_API": f"{base}/w/api.php"},
        {"query": "Austin", "results": 1}, wikipedia,
        lambda base: {"query": "Austin", "results": [{"title": "Austin, Texas", "url":
                      "https://en.wikipedia.org/wiki/Austin%2C_Texas", "extract": "Austin is the capital of Texas."}]},
        as_json({"batchcomplete": True, "warnings": {"main": {"warnings": "Unrecognized parameter"}}}),
        r"Wikipedia answered in a form this tool does not know \(no query\.search or query\.pages\)", requests=2),
    Row("arxiv_search", "arxiv_search", "arxiv.py:arxiv_search", lambda base: {"ARXIV_API": f"{base}/api/query"},
        {"query": "small models", "results": 1}, lambda path, query: ("application/atom+xml; charset=utf-8", FEED),
        lambda base: {"query": "small models", "results": [
            {"title": "Small Models, Structured Outputs", "authors": "A. Author", "published": "2024-01-02",
             "url": "http://arxiv.org/abs/2401.00001v1",
             "summary": "Constrained decoding makes small models reliable."}]},
        ("application/atom+xml", b"Rate exceeded."),
        r"arXiv did not answer an Atom feed this tool can read \(ParseError\)"),
    Row("web_search-searxng", "web_search", "web_search.py:web_search", lambda base: {"SEARXNG_URL": base},
        {"query": "flowrun", "results": 1},
        lambda path, query: as_json({"query": query["q"], "number_of_results": 1, "results": [
            {"url": "https://example.org/flowrun", "title": "Flowrun", "content": "A workflow <b>engine</b>.",
             "engine": "duckduckgo"}]}),
        lambda base: {**SEARCH_RESULT, "provider": "searxng"},
        as_json({"query": "flowrun", "results": "none"}),
        r"the search provider answered in a form this tool does not know \(no results list\)",
        ("SEARXNG_URL", r"tool web_search needs a search provider: set SEARXNG_URL")),
    Row("web_search-brave", "web_search", "web_search.py:web_search",
        lambda base: {"BRAVE_API_KEY": "b-key", "BRAVE_SEARCH_API": f"{base}/res/v1/web/search"},
        {"query": "flowrun", "results": 1},
        lambda path, query: as_json({"type": "search", "web": {"type": "search", "results": [
            {"title": "Flowrun", "url": "https://example.org/flowrun", "description": "A <strong>workflow</strong> "
             "engine."}]}}),
        lambda base: {**SEARCH_RESULT, "provider": "brave"},
        as_json({"type": "search", "query": {"original": "flowrun"}}),
        r"the search provider answered in a form this tool does not know \(no results list\)",
        ("BRAVE_API_KEY", r"tool web_search needs a search provider: set SEARXNG_URL .*, or BRAVE_API_KEY")),
    Row("web_search-google", "web_search", "web_search.py:web_search",
        lambda base: {"GOOGLE_API_KEY": "g-key", "GOOGLE_CSE_ID": "cx-1",
                      "GOOGLE_SEARCH_API": f"{base}/customsearch/v1"},
        {"query": "flowrun", "results": 1},
        lambda path, query: as_json({"kind": "customsearch#search", "items": [
            {"kind": "customsearch#result", "title": "Flowrun", "link": "https://example.org/flowrun",
             "snippet": "A workflow engine."}]}),
        lambda base: {**SEARCH_RESULT, "provider": "google"},
        HTML_ERROR, r"127\.0\.0\.1 did not answer JSON",
        ("GOOGLE_CSE_ID", r"tool web_search needs a search provider: .* or GOOGLE_API_KEY and GOOGLE_CSE_ID")),
    Row("wolfram_alpha", "wolfram_alpha", "wolfram.py:wolfram_alpha",
        lambda base: {"WOLFRAM_APP_ID": "DEMO-APPID", "WOLFRAM_API": f"{base}/api/v1/llm-api"},
        {"query": "integrate x^2 sin x"}, lambda path, query: ("text/plain;charset=utf-8", WOLFRAM.encode()),
        lambda base: {"query": "integrate x^2 sin x", "answer": WOLFRAM.strip()},
        HTML_ERROR, r"Wolfram\|Alpha did not answer the plain text of its LLM API \(text/html\)",
        ("WOLFRAM_APP_ID", r"tool wolfram_alpha needs a Wolfram\|Alpha AppID .*: set the environment variable "
                           r"WOLFRAM_APP_ID")),
    Row("http_get", "http_get", "http_get.py:http_get",
        lambda base: {"HTTP_GET_HOSTS": "docs.python.org, 127.0.0.1"},
        {"url": "{base}/guide"}, lambda path, query: ("text/html; charset=utf-8", PAGE),
        lambda base: {"url": f"{base}/guide", "title": "The Guide",
                      "text": "Guide\nHello world!\nStep one\nStep two"},
        ("text/html", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), r"127\.0\.0\.1 answered binary data labelled text/html",
        ("HTTP_GET_HOSTS", r"tool http_get needs the hosts it may get pages from .*: set the environment variable "
                           r"HTTP_GET_HOSTS")),
    Row("exchange_rate", "exchange_rate", "rates.py:exchange_rate", lambda base: {"RATES_URL": f"{base}/latest"},
        {"base": "USD", "quote": "EUR"}, lambda path, query: as_json({"rate": 0.92, "date": "2026-11-30"}),
        lambda base: {"base": "USD", "quote": "EUR", "rate": 0.92, "date": "2026-11-30"},
        as_json({"rate": "0.92", "date": "2026-11-30"}),
        r'the rates service did not answer \{"rate": a number above 0, "date": "YYYY-MM-DD"\}',
        ("RATES_URL", r"tool exchange_rate needs a rates service .*: set the environment variable RATES_URL")),
]
VARIABLES = {name for manifest in load_tools([]).tools.values() for name in manifest.variables}


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The fake's base URL."""
    fake = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{fake.server_port}"
    fake.shutdown()
    fake.server_close()


def ready(row: Row, base: str, monkeypatch: pytest.MonkeyPatch) -> Callable[[], Any]:
    """A call of `row`'s tool pointed at the fake (and nothing else set), run as the worker runs it: with the hosts
    of its manifest; short waits and timeouts."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in row.env(base).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(network, "WAIT", 0.01)
    monkeypatch.setattr(network, "TIMEOUT", 0.2)
    Fake.plan, Fake.asked, Fake.answer, Fake.malformed = [], [], row.answer, row.malformed
    Fake.release = threading.Event()
    function = load_entry(row.entry, data_dir("tools"))
    hosts = load_tools([]).tools[row.tool].hosts
    arguments = {name: value.format(base=base) if isinstance(value, str) else value
                 for name, value in row.arguments.items()}

    def call() -> Any:
        reachable.set(hosts)
        running.set(row.tool)
        return function(**arguments)

    return lambda: contextvars.copy_context().run(call)


@pytest.fixture(autouse=True)
def _release() -> Iterator[None]:
    yield
    Fake.release.set()  # a "slow" request's thread ends with its test


def fails(call: Callable[[], Any], kind: type[ToolError], message: str) -> None:
    with pytest.raises(ToolError, match=message) as failed:
        call()
    assert failed.type is kind


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_a_network_tool_answers_what_its_provider_says(row: Row, server: str, monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    assert ready(row, server, monkeypatch)() == row.expected(server)
    assert len(Fake.asked) == row.requests


@pytest.mark.parametrize("row", [row for row in ROWS if row.missing], ids=str)
def test_a_missing_key_names_the_variable_to_set_and_asks_nobody(row: Row, server: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    call = ready(row, server, monkeypatch)
    assert row.missing
    variable, message = row.missing
    monkeypatch.delenv(variable)
    fails(call, ToolError, message)
    assert Fake.asked == []


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_a_429_is_tried_again_and_then_succeeds(row: Row, server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    call = ready(row, server, monkeypatch)
    Fake.plan = ["429"]
    assert call() == row.expected(server)
    assert len(Fake.asked) == row.requests + 1
    assert Fake.asked[0] == Fake.asked[1]  # the same request again


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_a_5xx_that_stays_is_a_tool_error_after_every_try(row: Row, server: str, monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    call = ready(row, server, monkeypatch)
    Fake.plan = ["503"] * network.TRIES
    fails(call, ToolError, rf"127\.0\.0\.1 answered 503 Service Unavailable after {network.TRIES} tries")
    assert len(Fake.asked) == network.TRIES


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_a_provider_that_does_not_answer_in_time_is_a_tool_timeout(row: Row, server: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    call = ready(row, server, monkeypatch)
    Fake.plan = ["slow"]
    fails(call, ToolTimeout, r"127\.0\.0\.1 did not answer within 0\.2 s")
    assert len(Fake.asked) == 1


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_an_answer_too_large_is_refused(row: Row, server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    call = ready(row, server, monkeypatch)
    Fake.plan = ["big"]
    fails(call, ToolError, r"127\.0\.0\.1 answered more than 1,048,576 bytes")
    assert len(Fake.asked) == 1


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_a_redirect_to_a_host_the_manifest_does_not_list_is_refused(row: Row, server: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    call = ready(row, server, monkeypatch)
    Fake.plan = ["redirect"]
    listed = ", ".join(load_tools([]).tools[row.tool].hosts).replace("$", r"\$").replace("*", r"\*")
    fails(call, ToolError, rf"tool {row.tool} may not reach localhost \(its manifest's hosts: {listed}\)")
    assert [host for host, *_ in Fake.asked] == [server.removeprefix("http://")]  # localhost was never asked


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_a_malformed_answer_is_a_tool_error_saying_so(row: Row, server: str, monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    call = ready(row, server, monkeypatch)
    Fake.plan = ["malformed"]
    fails(call, ToolError, row.malformed_error)
    assert len(Fake.asked) == 1
