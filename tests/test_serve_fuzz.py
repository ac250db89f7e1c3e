"""`flowrun serve` against a property-based OpenAPI fuzzer: Schemathesis generates requests from /openapi.json (valid
and invalid, every route, methods the API does not take, then sequences of calls following the API's links) and
checks each response: never a 5xx, every status, content type, header and body as the schema says.

Schemathesis runs from its own virtual environment, made here once per machine: it pins jsonschema-rs below the
version flowrun needs, so it cannot share flowrun's. It is a black box to the server anyway: a real `flowrun serve`
process on loopback, over HTTP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ADDER
from tests.test_serve import free_port, serving

pytestmark = pytest.mark.slow
SCHEMATHESIS = "schemathesis==4.32.5"
CALL = json.dumps({"tool": "calculator", "arguments": {"expression": "2 + 3"}})


@pytest.fixture(scope="session")
def schemathesis() -> str:
    """The schemathesis command, in a virtual environment of its own (installed from the package index once)."""
    home = Path(tempfile.gettempdir()) / f"flowrun-tests-{SCHEMATHESIS.replace('==', '-')}"
    command = home / "bin" / "schemathesis"
    if not command.exists():
        for step in ([sys.executable, "-m", "venv", str(home)],
                     [str(home / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", SCHEMATHESIS]):
            done = subprocess.run(step, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, f"`{' '.join(step)}` failed: {done.stderr[-2000:]}"
    return str(command)


def test_the_api_answers_whatever_is_sent_as_its_openapi_schema_says_and_never_with_a_5xx(
        schemathesis: str, tmp_path: Path) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "adder.yaml").write_text(ADDER)
    cassette = tmp_path / "cassette.yaml"
    cassette.write_text(json.dumps({"responses": [{"key": "add", "text": CALL}] * 50}))
    port = free_port()
    server = serving(port, flows, cassette, tmp_path / "runs.db")
    try:
        fuzz = subprocess.run(
            [schemathesis, "run", f"http://127.0.0.1:{port}/openapi.json", "--checks", "all", "--workers", "1",
             "--max-examples", os.environ.get("FLOWRUN_FUZZ_EXAMPLES", "30"), "--seed", "1",
             "--generation-database", "none", "--no-color"],
            capture_output=True, text=True, timeout=900, cwd=tmp_path)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert fuzz.returncode == 0, fuzz.stdout[-6000:] + fuzz.stderr[-2000:]
    assert " passed" in fuzz.stdout and "generated" in fuzz.stdout, fuzz.stdout[-2000:]
