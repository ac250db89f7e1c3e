"""A plain (non-editable) `pip install .` into a fresh venv finds schemas/, flows/ and tools/."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT


def sh(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.slow
def test_wheel_install_validates_draws_and_runs_bundled_flows(tmp_path: Path) -> None:
    sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", ROOT)
    (wheel,) = (tmp_path / "dist").glob("flowrun-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for expected in ("engine/_data/schemas/flow.schema.json", "engine/_data/schemas/tool.schema.json",
                     "engine/_data/flows/travel_agent.yaml", "engine/_data/tools/calculator.tool.yaml"):
        assert expected in names

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python, flowrun = env_dir / "bin" / "python", env_dir / "bin" / "flowrun"
    sh(python, "-m", "pip", "install", "-q", wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    bundled = sh(python, "-c", "from engine.resources import data_dir; print(data_dir('flows'))", cwd=elsewhere)
    bundled_flows = Path(bundled.stdout.strip())
    assert bundled_flows.is_relative_to(env_dir)

    assert "no problems" in sh(flowrun, "validate", bundled_flows, cwd=elsewhere).stdout
    assert "no problems" in sh(flowrun, "validate", ROOT / "flows", ROOT / "tools", cwd=elsewhere).stdout
    graph = sh(flowrun, "graph", bundled_flows / "travel_agent.yaml", cwd=elsewhere).stdout
    assert graph.startswith("flowchart TD") and graph.count("-->") == 17
    assert "calculator" in sh(flowrun, "tools", "list", cwd=elsewhere).stdout
    # The bundled tools' code runs from the wheel, and the run lands in .flowrun/ of the working directory.
    problem = "problem=A train covers 180 km in 2.5 hours. What is its speed in m/s?"  # as the README's
    ran = sh(flowrun, "run", bundled_flows / "math_agent.yaml", "-i", problem, "--json",
             "--backend", "scripted", "--cassette", bundled_flows / "cassettes" / "math_agent.cassette.yaml",
             cwd=elsewhere)
    assert json.loads(ran.stdout)["answer"]["answer"] == 20
    assert (elsewhere / ".flowrun" / "flowrun.db").is_file()


def _lower_bounds(requirements: list[str]) -> dict[str, str]:
    found = {}
    for requirement in requirements:  # with an environment marker after it or not
        match = re.fullmatch(r"([\w.-]+)(?:\[[\w,]+\])?>=([\w.]+)(?:;.+)?", requirement.replace(" ", ""))
        assert match, f"{requirement}: state a lower bound (>=) that constraints/lowest.txt can pin"
        found[match[1].lower().replace("_", "-")] = match[2]
    return found


def _release(version: str) -> tuple[int, ...]:
    parts = [int(p) for p in version.split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def test_lowest_constraints_pin_every_lower_bound() -> None:
    # .ci/lowest tests the oldest versions allowed only if the pins are the bounds: a bound raised alone is untested
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    bounds = _lower_bounds([*project["dependencies"], *project["optional-dependencies"]["test"]])
    pins = dict(line.split("==") for line in (ROOT / "constraints" / "lowest.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert {name: _release(v) for name, v in bounds.items()} == \
        {name: _release(v) for name, v in pins.items() if name in bounds}
