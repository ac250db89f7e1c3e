"""Tools that reach the network (engine.kernel.network, tools/*.py): what each makes of its provider's documented
answers, against fakes on loopback, and which hosts a tool may reach. The failures every network tool shares (a 429,
a 5xx, a timeout, an answer too large, a redirect elsewhere, a malformed answer, a missing key) are
test_network_failures.py's matrix."""

from __future__ import annotations

import asyncio
import gzip
import http.server
import threading
import time
import urllib.parse
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from engine.flow.manifest import load_tools
from engine.kernel import network
from engine.kernel.kernel import Kernel
from engine.kernel.storage import Storage
from engine.kernel.tool_code import ToolError, ToolTimeout, load_entry, reachable, running
from engine.kernel.tools import tool_from_manifest
from engine.llm.scripted import ScriptedBackend
from engine.resources import data_dir
from tests.conftest import JSONHandler

SEARCH = {"batchcomplete": True, "query": {"searchinfo": {"totalhits": 2}, "search": [
    {"ns": 0, "title": "Austin, Texas", "pageid": 1},
    {"ns": 0, "title": "Austin (given name)", "pageid": 2}]}}
PAGES = {"batchcomplete": True, "query": {"pages": [
    {"pageid": 1, "ns": 0, "title": "Austin, Texas", "extract": "Austin is the capital of the U.S. state of Texas. "
                                                                 "It is the 10th-most populous city. " * 30},
    {"pageid": 2, "ns": 0, "title": "Austin (given name)", "extract": "Austin is a given name."}]}}


class Wiki(JSONHandler):
    """A MediaWiki Action API at /w/api.php, answering as `plan` says, one behaviour a request (then "ok"): "refused"
    is the API's error object."""

    plan: ClassVar[list[str]] = []
    asked: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query, keep_blank_values=True))
        Wiki.asked.append(query)
        how = Wiki.plan.pop(0) if Wiki.plan else "ok"
        if how == "refused":
            self.reply({"error": {"code": "badvalue", "info": "Unrecognized value for parameter \"list\"."}})
        elif how == "many":  # more hits than asked for
            self.reply(SEARCH)
        elif query.get("prop") == "extracts":
            self.reply(PAGES)
        else:  # as many hits as srlimit asks
            hits = SEARCH["query"]["search"][:int(query.get("srlimit", "10"))]
            self.reply({**SEARCH, "query": {**SEARCH["query"], "search": hits}})


@pytest.fixture
def wiki(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The fake API's URL, set as WIKIPEDIA_API; the wikipedia tool's hosts let the tool code reach it."""
    Wiki.plan, Wiki.asked = [], []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Wiki)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/w/api.php"
    monkeypatch.setenv("WIKIPEDIA_API", url)
    manifest = load_tools([]).tools["wikipedia"]
    reached, named = reachable.set(manifest.hosts), running.set("wikipedia")
    try:
        yield url
    finally:
        reachable.reset(reached)
        running.reset(named)
        server.shutdown()


def search(query: str = "Austin", **arguments: Any) -> Any:
    return load_entry("wikipedia.py:wikipedia", data_dir("tools"))(query, **arguments)


def test_wikipedia_finds_articles_with_their_urls_and_opening_cut_to_size(wiki: str) -> None:
    found = search("Austin", results=2)
    assert [r["title"] for r in found["results"]] == ["Austin, Texas", "Austin (given name)"]
    assert found["results"][0]["url"] == "https://en.wikipedia.org/wiki/Austin%2C_Texas"
    assert len(found["results"][0]["extract"]) <= 602 and found["results"][0]["extract"].endswith(" …")
    assert Wiki.asked[0] == {"action": "query", "list": "search", "srsearch": "Austin", "srlimit": "2", "srprop": "",
                             "format": "json", "formatversion": "2"}
    assert Wiki.asked[1]["pageids"] == "1|2" and Wiki.asked[1]["exintro"] == "1"


def test_wikipedia_says_why_the_api_refused_a_query(wiki: str) -> None:
    Wiki.plan = ["refused"]
    with pytest.raises(ToolError, match='Wikipedia refused the query: Unrecognized value for parameter "list"'):
        search()
    assert len(Wiki.asked) == 1


def test_hosts_match_names_subdomains_and_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_URL", "https://api.example.org:8443/v1")
    hosts = ("*.wikipedia.org", "export.arxiv.org", "$SERVICE_URL", "$UNSET_URL")
    assert [network.allowed(h, hosts) for h in ("en.wikipedia.org", "wikipedia.org", "evilwikipedia.org",
                                                "export.arxiv.org", "arxiv.org", "API.example.org", "")] == \
        [True, True, False, True, False, True, False]


def test_a_variable_holds_one_url_or_a_list_of_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SITES", " docs.python.org, API.example.org:8443 ,*.gov.uk,127.0.0.1,[::1,, ")
    hosts = ("$SITES",)
    assert [network.allowed(h, hosts) for h in ("docs.python.org", "python.org", "api.example.org", "example.org",
                                                "www.gov.uk", "gov.uk", "evilgov.uk", "127.0.0.1", "")] == \
        [True, False, True, False, True, True, False, True, False]  # "[::1" is no host: left out, not an error
    monkeypatch.setenv("SITES", "https://rates.example.org/latest?symbols=EUR,evil.example")  # one URL: no list
    assert [network.allowed(h, hosts) for h in ("rates.example.org", "evil.example")] == [True, False]
    monkeypatch.setenv("SITES", "")
    assert not network.allowed("docs.python.org", hosts)


def test_names_compare_in_their_ascii_form_and_an_address_only_as_itself() -> None:
    assert network.allowed("xn--mnchen-3ya.de", ("münchen.de",))
    assert network.allowed("münchen.de", ("xn--mnchen-3ya.de",))
    assert network.allowed("www.xn--mnchen-3ya.de", ("*.münchen.de",))
    assert not network.allowed("127.0.0.1", ("*.0.0.1",)) and network.allowed("127.0.0.1", ("127.0.0.1",))


def test_a_retry_after_of_digits_that_are_not_ascii_waits_as_backoff_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(network, "WAIT", 0.25)
    assert 0 <= network._wait(1, "²") <= 0.25 and network._wait(1, " 3 ") == 3


def test_through_the_kernel_a_tool_reaches_only_the_hosts_of_its_manifest(tmp_path: Path, wiki: str) -> None:
    (tmp_path / "peek.py").write_text("from engine.kernel.network import get_json\n\n"
                                      "def peek(url):\n    return get_json(url)\n")
    (tmp_path / "peek.tool.yaml").write_text("name: peek\ndescription: GETs a URL.\nentry: peek.py:peek\n"
                                             "parameters: {type: object, properties: {url: {type: string}}}\n"
                                             "idempotent: true\n")
    manifests = load_tools([tmp_path])
    kernel = Kernel(ScriptedBackend([]), Storage(f"sqlite:///{tmp_path / 'runs.db'}"),
                    tools=[tool_from_manifest(manifests.tools[name]) for name in ("peek", "wikipedia")],
                    workspaces=tmp_path / "workspaces")

    kernel.open_run("run", "agent", ["peek", "wikipedia"])

    async def calls() -> tuple[Any, str]:
        found = await kernel.call_tool("agent", "run", "wikipedia", {"query": "Austin", "results": 1})
        try:
            await kernel.call_tool("agent", "run", "peek", {"url": wiki})
        except ToolError as exc:
            return found.result, str(exc)
        return found.result, ""

    found, refused = asyncio.run(calls())
    assert [r["title"] for r in found["results"]] == ["Austin, Texas"]
    assert refused == "tool peek may not reach 127.0.0.1 (its manifest's hosts: none)"


ATOM_FEED = """<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom" xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/"
      xmlns:arxiv="http://arxiv.org/schemas/atom">
  <title type="html">ArXiv Query: search_query=all:small models</title>
  <id>http://arxiv.org/api/cHxbiOdZaP56ODnBPIenZhzg5f8</id>
  <updated>2026-11-30T00:00:00-05:00</updated>
  <opensearch:totalResults>2</opensearch:totalResults>
  <entry>
    <id>http://arxiv.org/abs/2401.00001v1</id>
    <published>2024-01-02T18:00:00Z</published>
    <title>Small Models,
      Structured Outputs</title>
    <summary>  We show that constrained decoding makes small models reliable. {words} </summary>
    {authors}
    <link href="http://arxiv.org/abs/2401.00001v1" rel="alternate" type="text/html"/>
  </entry>
  <entry>
    <id>http://arxiv.org/abs/2402.00002v2</id>
    <published>2024-02-03T18:00:00Z</published>
    <title>Voting Helps</title>
    <summary>Self-consistency for tiny models.</summary>
    <author><name>A. Author</name></author>
  </entry>
</feed>""".format(words="More words. " * 80,
                 authors="".join(f"<author><name>Author {n}</name></author>" for n in range(7)))
ATOM_ERROR = """<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><entry><id>http://arxiv.org/api/errors#incorrect_id_format</id>
<title>Error</title><summary>incorrect id format for 1234.12345</summary></entry></feed>"""
BOMB = """<?xml version="1.0"?><!DOCTYPE feed [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>
<feed xmlns="http://www.w3.org/2005/Atom"><entry><title>&b;</title></entry></feed>"""


class Arxiv(JSONHandler):
    """The arXiv API at /api/query, answering the next body of `bodies` (Atom XML, or not)."""

    bodies: ClassVar[list[str]] = []
    asked: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        Arxiv.asked.append(dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query)))
        body = Arxiv.bodies.pop(0).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/atom+xml; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_arxiv_search_reads_the_atom_feed_safely_and_says_what_went_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Arxiv)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("ARXIV_API", f"http://127.0.0.1:{server.server_port}/api/query")
    Arxiv.bodies, Arxiv.asked = [ATOM_FEED, ATOM_ERROR, "<html>busy</html>", "not XML at all", BOMB], []
    search = load_entry("arxiv.py:arxiv_search", data_dir("tools"))
    reached = reachable.set(load_tools([]).tools["arxiv_search"].hosts)
    named = running.set("arxiv_search")
    try:
        found = search("small models", results=2)
        assert Arxiv.asked[0] == {"search_query": "all:small models", "start": "0", "max_results": "2",
                                  "sortBy": "relevance"}
        first, second = found["results"]
        assert (first["title"], first["published"], first["url"]) == (
            "Small Models, Structured Outputs", "2024-01-02", "http://arxiv.org/abs/2401.00001v1")
        assert first["authors"] == "Author 0, Author 1, Author 2, Author 3, Author 4 et al."
        assert first["summary"].startswith("We show that constrained decoding") and len(first["summary"]) <= 602
        assert (second["authors"], second["summary"]) == ("A. Author", "Self-consistency for tiny models.")
        with pytest.raises(ToolError, match=r"arXiv refused the query: incorrect id format for 1234\.12345"):
            search("id:1234.12345")
        for _ in range(3):  # not a feed, not XML, a feed with an entity bomb (refused, not expanded)
            with pytest.raises(ToolError, match="arXiv did not answer an Atom feed this tool can read"):
                search("anything")
    finally:
        reachable.reset(reached)
        running.reset(named)
        server.shutdown()


class Search(JSONHandler):
    """SearXNG (/search?format=json), Brave (/res/v1/web/search) and Google (/customsearch/v1), as their documented
    answers look; `asked` keeps each request's path, query and the Brave key sent."""

    asked: ClassVar[list[tuple[str, dict[str, str], str | None]]] = []

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        Search.asked.append((url.path, query, self.headers.get("X-Subscription-Token")))
        if query.get("q") == "broken":
            self.reply({"unexpected": True})
        elif url.path == "/search":
            self.reply({"query": query["q"], "number_of_results": 2, "results": [
                {"url": "https://example.org/a", "title": "A &amp; B", "content": "First <b>page</b>.",
                 "engine": "duckduckgo"},
                {"url": "https://example.org/b", "title": "B", "content": "x" * 500, "engine": "wikipedia"}]})
        elif url.path == "/res/v1/web/search":
            self.reply({"type": "search", "web": {"type": "search", "results": [
                {"title": "Brave <strong>result</strong>", "url": "https://example.com/", "description":
                 "The <strong>best</strong> match.", "language": "en"}]}})
        elif query.get("q") == "nothing":
            self.reply({"kind": "customsearch#search", "searchInformation": {"totalResults": "0"}})
        else:
            self.reply({"kind": "customsearch#search", "items": [
                {"kind": "customsearch#result", "title": "Google result", "link": "https://example.net/",
                 "snippet": "A snippet."}]})


def test_web_search_asks_the_provider_configured_and_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Search)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    for name in ("SEARXNG_URL", "BRAVE_API_KEY", "GOOGLE_API_KEY", "GOOGLE_CSE_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BRAVE_SEARCH_API", f"{base}/res/v1/web/search")
    monkeypatch.setenv("GOOGLE_SEARCH_API", f"{base}/customsearch/v1")
    search = load_entry("web_search.py:web_search", data_dir("tools"))
    reached = reachable.set(load_tools([]).tools["web_search"].hosts)
    named = running.set("web_search")
    Search.asked = []
    try:
        with pytest.raises(ToolError, match=r"set SEARXNG_URL .*, or BRAVE_API_KEY, or GOOGLE_API_KEY and "
                                            r"GOOGLE_CSE_ID"):
            search("flowrun")
        monkeypatch.setenv("GOOGLE_API_KEY", "g-key")
        monkeypatch.setenv("GOOGLE_CSE_ID", "engine-1")
        assert search("flowrun", results=1) == {"query": "flowrun", "provider": "google", "results": [
            {"title": "Google result", "url": "https://example.net/", "snippet": "A snippet."}]}
        assert Search.asked[-1][1] == {"key": "g-key", "cx": "engine-1", "q": "flowrun", "num": "1"}
        assert search("nothing")["results"] == []  # Google leaves `items` out when nothing matched
        monkeypatch.setenv("BRAVE_API_KEY", "b-key")
        assert search("flowrun")["results"] == [{"title": "Brave result", "url": "https://example.com/",
                                                  "snippet": "The best match."}]
        assert Search.asked[-1][2] == "b-key"  # the key goes in the header, never in the URL
        monkeypatch.setenv("SEARXNG_URL", base)
        found = search("flowrun", results=2)
        assert found["provider"] == "searxng" and Search.asked[-1][1] == {"q": "flowrun", "format": "json"}
        assert [r["title"] for r in found["results"]] == ["A & B", "B"]
        assert found["results"][0]["snippet"] == "First page." and len(found["results"][1]["snippet"]) <= 302
        with pytest.raises(ToolError, match="a form this tool does not know"):
            search("broken")
    finally:
        reachable.reset(reached)
        running.reset(named)
        server.shutdown()


class Canned(http.server.BaseHTTPRequestHandler):
    """Any service: answers each request with the next of `replies` (status, Content-Type, body, more headers);
    `asked` keeps each request's path, query and headers."""

    replies: ClassVar[list[tuple[int, str, bytes, dict[str, str]]]] = []
    asked: ClassVar[list[tuple[str, dict[str, str], dict[str, str]]]] = []

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        Canned.asked.append((url.path, dict(urllib.parse.parse_qsl(url.query)), dict(self.headers)))
        status, kind, body, headers = Canned.replies.pop(0)
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **({"Content-Type": kind} if kind else {}),
                            **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def canned() -> Iterator[str]:
    """The base URL of a Canned service on loopback."""
    Canned.replies, Canned.asked = [], []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Canned)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()  # a short wait to shut down
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def as_tool(name: str, entry: str) -> Any:
    """The bundled tool `name`'s function, called as a worker calls it (with its manifest's hosts)."""
    function, hosts = load_entry(entry, data_dir("tools")), load_tools([]).tools[name].hosts

    def call(*arguments: Any, **named: Any) -> Any:
        reached, running_now = reachable.set(hosts), running.set(name)
        try:
            return function(*arguments, **named)
        finally:
            reachable.reset(reached)
            running.reset(running_now)

    return call


# The LLM API's answer: sections of plain text, written for a language model (its documentation's example)
DENSEST = """Query:
"10 densest elemental metals"

Input interpretation:
10 densest metallic elements | by mass density

Result:
""" + "".join(f"{n} | metal number {n} | {40 - n} g/cm^3 |\n" for n in range(1, 200)) + """
Wolfram|Alpha website result for "10 densest elemental metals":
https://www.wolframalpha.com/input?i=10+densest+elemental+metals
"""


def test_wolfram_alpha_asks_the_llm_api_and_cuts_the_answer_at_a_line(canned: str, monkeypatch: pytest.MonkeyPatch
                                                                      ) -> None:
    monkeypatch.setenv("WOLFRAM_API", f"{canned}/api/v1/llm-api")
    monkeypatch.setenv("WOLFRAM_APP_ID", "DEMO-APPID")
    Canned.replies = [(200, "text/plain;charset=utf-8", DENSEST.encode(), {})]
    found = as_tool("wolfram_alpha", "wolfram.py:wolfram_alpha")("10 densest elemental metals")
    path, query, headers = Canned.asked[0]
    assert (path, query) == ("/api/v1/llm-api", {"input": "10 densest elemental metals", "appid": "DEMO-APPID",
                                                 "maxchars": "1500"})
    assert headers["Accept"] == "text/plain"
    answer = found["answer"]
    assert answer.startswith('Query:\n"10 densest elemental metals"') and len(answer) <= 1500
    assert answer.endswith(" g/cm^3 | …")  # a whole line, then the mark of the cut
    assert DENSEST.startswith(answer.removesuffix(" …"))


@pytest.mark.parametrize(("status", "body", "message"), [
    pytest.param(501, "Wolfram|Alpha did not understand your input\nThings to try instead:\nintegrate x^2",
                 r"Wolfram\|Alpha could not interpret the input: Wolfram\|Alpha did not understand your input\n"
                 r"Things to try", id="not-understood"),
    pytest.param(403, "Error 1: Invalid appid",
                 r"Wolfram\|Alpha refused the AppID in WOLFRAM_APP_ID: Error 1: Invalid appid", id="invalid-appid"),
    pytest.param(403, "Error 2: Appid missing",
                 r"Wolfram\|Alpha refused the AppID in WOLFRAM_APP_ID: Error 2: Appid missing", id="appid-missing"),
    pytest.param(400, "Error: input missing", r"Wolfram\|Alpha got no input: Error: input missing", id="no-input"),
    pytest.param(200, "", r"Wolfram\|Alpha did not answer the plain text of its LLM API \(text/plain, empty\)",
                 id="empty"),
])
def test_wolfram_alpha_says_what_the_api_explained_and_does_not_ask_again(
        canned: str, monkeypatch: pytest.MonkeyPatch, status: int, body: str, message: str) -> None:
    monkeypatch.setenv("WOLFRAM_API", f"{canned}/api/v1/llm-api")
    monkeypatch.setenv("WOLFRAM_APP_ID", "DEMO-APPID")
    Canned.replies = [(status, "text/plain;charset=utf-8", body.encode(), {})] * 3
    with pytest.raises(ToolError, match=message):
        as_tool("wolfram_alpha", "wolfram.py:wolfram_alpha")("x^2 == y^3 ??")
    assert len(Canned.asked) == 1  # 501 is no 5xx to try again: the input stays what it is


ARTICLE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="windows-1252"><title>Caf\xe9
  culture</title><link rel="stylesheet" href="/s.css"><style>body { font: serif }</style>
<script type="application/ld+json">{"@type": "Article"}</script></head>
<body><nav><a href="/">Home</a> | <a href="/news">News</a></nav>
<article><h1>Caf\xe9 culture</h1><p>Paris has   many caf\xe9s.<br>Vienna has more.</p>
<template><p>Never shown</p></template><p>""" + "Long sentence here. " * 200 + """</p></article>
<noscript>Enable JavaScript</noscript></body></html>"""


def test_http_get_reads_the_text_a_reader_sees_cut_to_size(canned: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_GET_HOSTS", "127.0.0.1")
    Canned.replies = [(301, "", b"", {"Location": "/articles/cafe"}),
                      (200, "text/html", ARTICLE.encode("windows-1252"), {})]  # the charset in the markup only
    page = as_tool("http_get", "http_get.py:http_get")(f"{canned}/cafe", characters=300)
    assert page["url"] == f"{canned}/articles/cafe"  # where the redirect led
    assert page["title"] == "Café culture"
    assert page["text"].startswith("Home | News\nCafé culture\nParis has many cafés.\nVienna has more.\nLong sentence")
    assert len(page["text"]) <= 300 and page["text"].endswith(" …")
    assert page["text"].removesuffix(" …").rsplit(" ", 1)[1] in ("Long", "sentence", "here.")  # whole words
    assert not any(word in page["text"] for word in ("font", "Article", "Never shown", "JavaScript"))
    assert "text/html" in Canned.asked[0][2]["Accept"]


def test_http_get_gives_plain_text_and_json_as_they_are(canned: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_GET_HOSTS", canned)
    Canned.replies = [(200, "text/plain; charset=utf-8", b"  line one\n\n\tline  two \n", {}),
                      (200, "application/json", b'{"rate": 0.92}', {})]
    get = as_tool("http_get", "http_get.py:http_get")
    assert get(f"{canned}/notes.txt") == {"url": f"{canned}/notes.txt", "title": "", "text": "line one\nline two"}
    assert get(f"{canned}/rate")["text"] == '{"rate": 0.92}'


def test_http_get_reads_a_page_of_blocks_nested_deep_and_wide(canned: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """100,000 blocks nested, each but the innermost followed by a sibling: a walk that inserted line breaks in the
    tree took time in its depth at each block (hours for this page, past pytest-timeout); the text comes in one
    pass."""
    monkeypatch.setenv("HTTP_GET_HOSTS", canned)
    depth = 100_000
    page = "<div>" * depth + "core" + "</div><p>x</p>" * depth
    Canned.replies = [(200, "text/html; charset=utf-8", page.encode()[:network.MAX_RESPONSE], {})]
    text = as_tool("http_get", "http_get.py:http_get")(f"{canned}/deep", characters=100)["text"]
    assert text.startswith("core\nx\nx\n")


@pytest.mark.parametrize("kind", ["image/png", "application/pdf", "application/octet-stream", ""])
def test_http_get_refuses_what_is_not_text(canned: str, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    monkeypatch.setenv("HTTP_GET_HOSTS", canned)
    Canned.replies = [(200, kind, b"%PDF-1.7 \x00\x01", {})]
    with pytest.raises(ToolError, match=rf"127\.0\.0\.1 answered {kind or 'no content type'}, which http_get does "
                                        r"not read \(it reads HTML, plain text and JSON\)"):
        as_tool("http_get", "http_get.py:http_get")(f"{canned}/file")


def test_http_get_asks_only_hosts_http_get_hosts_lists(canned: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_GET_HOSTS", "docs.python.org,*.example.org")
    get = as_tool("http_get", "http_get.py:http_get")
    with pytest.raises(ToolError, match=r"127\.0\.0\.1 is not among the hosts HTTP_GET_HOSTS lists "
                                        r"\(docs\.python\.org,\*\.example\.org\)"):
        get(f"{canned}/page")
    with pytest.raises(ToolError, match=r"http_get gets http:// and https:// URLs, not 'file:///etc/passwd'"):
        get("file:///etc/passwd")
    assert Canned.asked == []


def test_through_the_kernel_http_get_and_wolfram_alpha_reach_what_their_variables_name(
        tmp_path: Path, canned: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_GET_HOSTS", "example.org, 127.0.0.1")
    monkeypatch.setenv("WOLFRAM_API", f"{canned}/api/v1/llm-api")
    monkeypatch.setenv("WOLFRAM_APP_ID", "DEMO-APPID")
    Canned.replies = [(200, "text/html", b"<title>Hi</title><p>Hello</p>", {}),
                      (200, "text/plain", b"Result:\n42", {})]
    manifests = load_tools([])
    kernel = Kernel(ScriptedBackend([]), Storage(f"sqlite:///{tmp_path / 'runs.db'}"),
                    tools=[tool_from_manifest(manifests.tools[name]) for name in ("http_get", "wolfram_alpha")],
                    workspaces=tmp_path / "workspaces")
    kernel.open_run("run", "agent", ["http_get", "wolfram_alpha"])

    async def calls() -> tuple[Any, Any, str]:
        page = await kernel.call_tool("agent", "run", "http_get", {"url": f"{canned}/hi"})
        answer = await kernel.call_tool("agent", "run", "wolfram_alpha", {"query": "6 * 7"})
        try:
            await kernel.call_tool("agent", "run", "http_get", {"url": "http://localhost:1/"})
        except ToolError as exc:
            return page.result, answer.result, str(exc)
        return page.result, answer.result, ""

    page, answer, refused = asyncio.run(calls())
    assert page == {"url": f"{canned}/hi", "title": "Hi", "text": "Hello"}
    assert answer == {"query": "6 * 7", "answer": "Result:\n42"}
    assert refused == "localhost is not among the hosts HTTP_GET_HOSTS lists (example.org, 127.0.0.1)"


def test_an_answer_in_gzip_or_deflate_is_read_decoded_and_inflating_stops_at_the_cap(
        canned: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What every real server does when asked (httpx asks), and a bomb: 64 MiB of zeros in 64 KiB of gzip."""
    monkeypatch.setenv("HTTP_GET_HOSTS", "127.0.0.1")
    page = b"<html><title>Zipped</title><p>Hello</p></html>"
    bomb = gzip.compress(b"\0" * (64 << 20))
    Canned.replies = [(200, "text/html", gzip.compress(page), {"Content-Encoding": "gzip"}),
                      (200, "text/plain", zlib.compress(b"deflated words"), {"Content-Encoding": "deflate"}),
                      (200, "text/plain", bomb, {"Content-Encoding": "gzip"}),
                      (200, "text/plain", gzip.compress(gzip.compress(b"twice")), {"Content-Encoding": "gzip, gzip"}),
                      (200, "text/plain", b"not gzip at all", {"Content-Encoding": "gzip"})]
    get = as_tool("http_get", "http_get.py:http_get")
    assert get(f"{canned}/z")["text"] == "Hello" and get(f"{canned}/d")["text"] == "deflated words"
    assert "gzip, deflate" in Canned.asked[0][2]["Accept-Encoding"]
    with pytest.raises(ToolError, match=r"127\.0\.0\.1 answered more than 1,048,576 bytes"):
        get(f"{canned}/bomb")
    with pytest.raises(ToolError, match=r"answered in an encoding the tool does not read \(gzip, gzip\)"):
        get(f"{canned}/twice")
    with pytest.raises(ToolError, match="answered a body that does not decode as gzip"):
        get(f"{canned}/bad")


def test_a_charset_that_is_no_text_encoding_reads_as_utf8(canned: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_GET_HOSTS", "127.0.0.1")
    Canned.replies = [(200, "text/plain; charset=hex", "café".encode(), {}),
                      (200, "text/html; charset=base64", "<p>thé</p>".encode(), {})]
    get = as_tool("http_get", "http_get.py:http_get")
    assert get(f"{canned}/hex")["text"] == "café" and get(f"{canned}/b64")["text"] == "thé"


def test_a_url_or_redirect_that_is_no_http_url_is_said_to_be_so(canned: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_GET_HOSTS", "127.0.0.1")
    get = as_tool("http_get", "http_get.py:http_get")
    with pytest.raises(ToolError, match=r"not a URL http_get can get: 'http://\[x/'"):
        get("http://[x/")
    Canned.replies = [(302, "", b"", {"Location": "file:///etc/passwd"})]
    with pytest.raises(ToolError, match=r"tool http_get gets only http:// and https:// URLs, not 'file://127\.0\.0\.1/etc/passwd'"):
        get(f"{canned}/away")


def test_the_callers_headers_go_to_its_host_only_not_where_a_redirect_leads(
        canned: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Brave's key is a header: a redirect to another host the manifest allows must not carry it there."""
    port = canned.rsplit(":", 1)[1]
    Canned.replies = [(302, "", b"", {"Location": f"http://localhost:{port}/elsewhere"}),
                      (200, "application/json", b'{"web": {"results": []}}', {})]
    reached, named = reachable.set(("127.0.0.1", "localhost")), running.set("web_search")
    try:
        network.get_json(f"{canned}/search", {"q": "x"}, {"X-Subscription-Token": "secret"})
    finally:
        reachable.reset(reached)
        running.reset(named)
    assert Canned.asked[0][2].get("X-Subscription-Token") == "secret"
    assert "X-Subscription-Token" not in Canned.asked[1][2]


class Drip(http.server.BaseHTTPRequestHandler):
    """An answer of 40 bytes, one every 50 ms: each read is quick, the whole is not."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "40")
        self.end_headers()
        for _ in range(40):
            self.wfile.write(b"x")
            self.wfile.flush()
            time.sleep(0.05)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_request_is_timed_whole_not_a_read_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(network, "TIMEOUT", 0.5)
    reached, named = reachable.set(("127.0.0.1",)), running.set("peek")
    try:
        with pytest.raises(ToolTimeout, match=r"127\.0\.0\.1 did not answer within 0\.5 s"):
            network.get(f"http://127.0.0.1:{server.server_port}/")
    finally:
        reachable.reset(reached)
        running.reset(named)
        server.shutdown()


def test_a_timeout_in_tool_code_keeps_its_kind_through_the_worker(tmp_path: Path) -> None:
    (tmp_path / "slow.py").write_text("from engine.kernel.tool_code import ToolTimeout\n\n"
                                      "def slow():\n    raise ToolTimeout('the service did not answer within 10 s')\n")
    (tmp_path / "slow.tool.yaml").write_text("name: slow\ndescription: Times out.\nentry: slow.py:slow\n"
                                             "parameters: {type: object}\nidempotent: true\n")
    kernel = Kernel(ScriptedBackend([]), Storage(f"sqlite:///{tmp_path / 'runs.db'}"),
                    tools=[tool_from_manifest(load_tools([tmp_path]).tools["slow"])], workspaces=tmp_path / "w")
    kernel.open_run("run", "agent", ["slow"])
    with pytest.raises(ToolTimeout, match=r"^the service did not answer within 10 s$"):
        asyncio.run(kernel.call_tool("agent", "run", "slow", {}))


def test_search_tools_give_at_most_the_results_asked_for(wiki: str, monkeypatch: pytest.MonkeyPatch) -> None:
    Wiki.plan = ["many"]
    assert len(search("Austin", results=1)["results"]) == 1


def test_a_rate_json_cannot_hold_or_a_date_that_is_no_date_is_malformed(canned: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RATES_URL", f"{canned}/latest")
    Canned.replies = [(200, "application/json", b'{"rate": Infinity, "date": "2026-11-30"}', {}),
                      (200, "application/json", b'{"rate": 0.92, "date": "x"}', {})]
    rate = as_tool("exchange_rate", "rates.py:exchange_rate")
    with pytest.raises(ToolError, match=r"127\.0\.0\.1 did not answer JSON"):
        rate("USD", "EUR")
    with pytest.raises(ToolError, match="the rates service did not answer"):
        rate("USD", "EUR")
