"""Shared helpers: where the repository's flows and fixtures are, and the expectations fixtures carry."""

from __future__ import annotations

import http.server
import json
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from engine.flow.manifest import ToolManifest, load_tools
from engine.flow.validate import NOT_FLOWS

ROOT = Path(__file__).resolve().parent.parent
FLOWS = ROOT / "flows"
FLOW_FILES = sorted(p for p in FLOWS.glob("*.yaml") if not p.name.endswith(NOT_FLOWS))  # not test cases
FIXTURES = Path(__file__).resolve().parent / "fixtures"
MATH_LOOP = Path(__file__).resolve().parent / "flows" / "math_loop.yaml"  # many steps, a loop, tool calls
MATH_LOOP_CASSETTE = MATH_LOOP.with_name("math_loop.cassette.yaml")
ADDER = (MATH_LOOP.parent / "adder.yaml").read_text()  # the calculator adds a and b, then the model says the sum
TALKER = (MATH_LOOP.parent / "talker.yaml").read_text()  # one model step, no tools
INVALID = FIXTURES / "invalid"

_MARKER = re.compile(r"#\s*<-\s*(.*)$")
# Upstream releases change behaviour under the tests (PyYAML 6.0.4's libyaml refuses deep nesting itself): the
# versions a run used head its report.
_WATCHED = ("pyyaml", "jsonschema-rs", "xllamacpp", "sqlmodel", "sqlalchemy", "jinja2", "networkx", "click", "ollama")


def pytest_report_header() -> str:
    """The versions of the dependencies whose behaviour the tests depend on."""
    return "flowrun dependencies: " + ", ".join(f"{name} {metadata.version(name)}" for name in _WATCHED)


def expected_diagnostics(path: Path) -> set[tuple[int, str]]:
    """(line, code) for each `# <- FRxxx` marker in a fixture: the diagnostics it must produce, and only those."""
    found = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        marker = _MARKER.search(line)
        if marker:
            found.update((number, code) for code in re.findall(r"FR\d{3}", marker.group(1)))
    return found


@pytest.fixture(scope="session")
def tools() -> dict[str, ToolManifest]:
    """The bundled tools."""
    loaded = load_tools([])
    assert not loaded.diagnostics
    return loaded.tools


# A flow whose first step needs no model (a `decide`), so a failure in the second leaves one finished step.
TWO_STEPS = """\
flowrun: 1
name: TwoSteps
description: A test agent.
inputs:
  topic: {type: string}
tools: [nap]
limits: {max_steps: 10}
steps:
  begin:
    kind: decision
    question: Go on?
    decide: go
    branches: {go: work, stop: done}
  work:
    kind: process
    instruction: Work on {{ inputs.topic }}.
    next: done
  done:
    kind: terminal
    instruction: Say what was done.
"""

NAP_MANIFEST = """\
name: nap
description: Sleeps for a while.
parameters:
  type: object
  properties: {seconds: {type: number}}
  required: [seconds]
entry: nap.py:nap
timeout: 0.3
idempotent: false
"""


@pytest.fixture
def two_steps(tmp_path: Path) -> Path:
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "nap.tool.yaml").write_text(NAP_MANIFEST)
    (tmp_path / "tools" / "nap.py").write_text("import time\n\ndef nap(seconds):\n    time.sleep(seconds)\n"
                                               "    return {'slept': seconds}\n")
    flow = tmp_path / "two_steps.yaml"
    flow.write_text(TWO_STEPS)
    return flow


class JSONHandler(http.server.BaseHTTPRequestHandler):
    """A fake service's request handler (http.server): `reply` sends JSON; requests are not logged."""

    def reply(self, data: Any, status: int = 200) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass
