"""flows/research_agent.yaml against fakes of its three providers on loopback, one server answering as SearXNG's JSON
API, MediaWiki's Action API and arXiv's Atom API document: the three searches run at once as child runs, whatever
fails is left out, the sources are numbered from data, and the answer quotes the sources the model picks (a
cassette's answer, or the embedded model's), each with its number.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.kernel.storage import Storage
from engine.kernel.tables import RunRow, StepRow, ToolCallRow
from tests.conftest import FLOWS, ROOT

QUESTION = "What is retrieval-augmented generation?"
FEED = """<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>ArXiv Query</title>
<entry><id>http://arxiv.org/abs/2005.11401v4</id><published>2020-05-22T17:26:28Z</published>
<title>Retrieval-Augmented Generation for Knowledge-Intensive NLP Tasks</title>
<summary>We combine a pre-trained seq2seq model with a dense vector index of Wikipedia.</summary>
<author><name>Patrick Lewis</name></author></entry></feed>"""


class Providers(http.server.BaseHTTPRequestHandler):
    """SearXNG at /search, MediaWiki at /w/api.php, arXiv at /api/query; those named in `down` answer 503."""

    down: ClassVar[set[str]] = set()

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path in Providers.down:
            self.send(503, "text/plain", b"Service Unavailable")
        elif url.path == "/search":
            self.send(200, "application/json", json.dumps({"query": query["q"], "results": [
                {"url": "https://example.org/rag", "title": "RAG explained",
                 "content": "Retrieval-augmented generation lets a model answer from documents it retrieves.",
                 "engine": "duckduckgo"},
                {"url": "https://example.org/cooking", "title": "Ragù recipe", "content": "Simmer for hours.",
                 "engine": "bing"}]}).encode())
        elif url.path == "/w/api.php" and query.get("prop") == "extracts":
            self.send(200, "application/json", json.dumps({"query": {"pages": [
                {"pageid": 7, "title": "Retrieval-augmented generation",
                 "extract": "Retrieval-augmented generation (RAG) is a technique that grants generative models "
                            "information retrieval capabilities."}]}}).encode())
        elif url.path == "/w/api.php":
            self.send(200, "application/json", json.dumps({"query": {"search": [
                {"ns": 0, "title": "Retrieval-augmented generation", "pageid": 7}]}}).encode())
        else:
            self.send(200, "application/atom+xml", FEED.encode())

    def send(self, status: int, kind: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def providers(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The fakes' base URL, which the three tools are pointed at."""
    Providers.down = set()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Providers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    for name in ("BRAVE_API_KEY", "GOOGLE_API_KEY", "GOOGLE_CSE_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SEARXNG_URL", base)
    monkeypatch.setenv("WIKIPEDIA_API", f"{base}/w/api.php")
    monkeypatch.setenv("ARXIV_API", f"{base}/api/query")
    yield base
    server.shutdown()


def research(tmp_path: Path, picked: list[int] | None) -> tuple[dict[str, Any], Storage]:
    """The flow's answer, the model's pick answered by a cassette (None: no model call expected), and its storage."""
    cassette = tmp_path / "pick.cassette.yaml"
    responses = [] if picked is None else [{"key": "pick", "text": json.dumps({"sources": picked})}]
    cassette.write_text(json.dumps({"responses": responses}))
    db = tmp_path / "runs.db"
    ran = CliRunner().invoke(main, ["run", str(FLOWS / "research_agent.yaml"), "--backend", "scripted", "--cassette",
                                    str(cassette), "-i", f"question={QUESTION}", "--db", str(db), "--json"])
    assert ran.exit_code == 0, ran.output
    return json.loads(ran.stdout)["answer"], Storage(f"sqlite:///{db}")


def test_the_three_searches_run_at_once_and_the_answer_quotes_the_sources_picked(tmp_path: Path, providers: str
                                                                                  ) -> None:
    answer, storage = research(tmp_path, [3, 1, 3])
    assert answer["answer"] == ("Retrieval-augmented generation (RAG) is a technique that grants generative models "
                                "information retrieval capabilities. [3] Retrieval-augmented generation lets a model "
                                "answer from documents it retrieves. [1]")
    assert [(s["n"], s["from"], s["url"]) for s in answer["sources"]] == [
        (3, "wiki", "https://en.wikipedia.org/wiki/Retrieval-augmented_generation"),
        (1, "web", "https://example.org/rag")]
    children = [run for run in storage.rows(RunRow) if run.parent]
    assert sorted(run.branch for run in children) == ["papers", "web", "wiki"]
    calls = storage.rows(ToolCallRow)
    assert sorted(call.tool for call in calls) == ["arxiv_search", "web_search", "wikipedia"]
    assert {call.run_id for call in calls} == {run.id for run in children}  # each search in its branch's run


def test_failed_searches_are_left_out_and_a_pick_of_no_source_cites_the_first(tmp_path: Path, providers: str,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEARXNG_URL")  # no web search provider: its branch fails
    Providers.down = {"/api/query"}  # arXiv answers 503, three times
    answer, _ = research(tmp_path, [7])  # a number no source has
    assert answer["sources"] == [{"n": 1, "title": "Retrieval-augmented generation", "from": "wiki",
                                  "url": "https://en.wikipedia.org/wiki/Retrieval-augmented_generation",
                                  "text": "Retrieval-augmented generation (RAG) is a technique that grants generative "
                                          "models information retrieval capabilities."}]
    assert answer["answer"].endswith("capabilities. [1]")


def test_when_every_search_fails_the_answer_says_so_with_no_model_call(tmp_path: Path, providers: str) -> None:
    Providers.down = {"/search", "/w/api.php", "/api/query"}
    answer, _ = research(tmp_path, None)
    assert answer == {"question": QUESTION, "answer": "No source answered: every search failed or found nothing.",
                      "sources": []}


@pytest.mark.slow
def test_on_the_embedded_model_every_citation_is_a_source_found(tmp_path: Path, providers: str) -> None:
    db = tmp_path / "runs.db"
    done = subprocess.run(
        [sys.executable, "-m", "engine", "run", str(FLOWS / "research_agent.yaml"), "--backend", "auto", "--json",
         "-i", f"question={QUESTION}", "--db", str(db)],
        cwd=tmp_path, capture_output=True, text=True, timeout=280,
        env={**os.environ, "OLLAMA_HOST": "http://127.0.0.1:9", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)["answer"]
    [sources] = [row.output for row in Storage(f"sqlite:///{db}").rows(StepRow) if row.step == "sources"]
    assert len(sources) == 4 and answer["sources"], answer  # 2 web pages, 1 article, 1 paper
    for source in answer["sources"]:
        assert source in sources and f"{source['text']} [{source['n']}]" in answer["answer"]
