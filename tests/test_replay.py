"""`flowrun runs replay`: a stored run walked again on what it recorded, with no model and no tool run, and every
difference from the recording reported."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import MATH_LOOP, MATH_LOOP_CASSETTE
from tests.test_crash import HERE
from tests.test_run_cli import cli, runs_of

LEDGER = ["--tools", str(HERE)]


def ledger_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A finished run of the crash test's ledger flow, in `tmp_path`; its database and run id."""
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "runs.db"
    code, out, err = cli("run", str(HERE / "ledger.yaml"), *LEDGER, "--backend", "scripted", "--cassette",
                         str(HERE / "ledger.cassette.yaml"), "-i", "purchases=apples 3, bread 2 and milk 1.5",
                         "--db", str(db), "--json")
    assert code == 0, err
    return db, json.loads(out)["run_id"]


def test_a_replay_matches_its_recording_without_running_a_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, run_id = ledger_run(tmp_path, monkeypatch)
    ledger = next(tmp_path.glob(".flowrun/workspaces/*/ledger.txt"))
    before = ledger.read_text()
    code, out, err = cli("runs", "replay", run_id[:8], *LEDGER, "--db", str(db))
    assert code == 0, out + err
    assert "replayed without a model: 10 steps, the same path, outputs and answer as recorded" in out
    assert ledger.read_text() == before  # append_entry's results came from the record
    assert len(runs_of(db)) == 1  # the replay stored nothing


def test_a_replay_reports_where_a_changed_flow_goes_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, run_id = ledger_run(tmp_path, monkeypatch)
    changed = tmp_path / "ledger.yaml"  # two purchases are enough now: the loop ends a visit early
    changed.write_text((HERE / "ledger.yaml").read_text().replace(
        "'yes' if visits.record < steps.plan.output['items'] | length", "'yes' if visits.record < 2"))
    code, out, _ = cli("runs", "replay", run_id, *LEDGER, "--flow", str(changed), "--db", str(db), "--json")
    assert code == 1
    report = json.loads(out)
    assert report["identical"] is False
    assert report["differences"][:2] == [
        f"{changed} changed since the run was recorded",
        "step 5 (more): the recorded run took branch 'yes', the replay 'no'",
    ]
    code, out, _ = cli("runs", "replay", run_id, *LEDGER, "--flow", str(changed), "--db", str(db))
    assert code == 1 and "the replay differs from the recording:\n- " in out


def test_replaying_an_unknown_run_or_a_missing_flow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, run_id = ledger_run(tmp_path, monkeypatch)
    code, _, err = cli("runs", "replay", "0000", "--db", str(db))
    assert code == 2 and "no run with an id starting '0000'" in err
    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE runs SET flow = 'gone.yaml'")
    code, _, err = cli("runs", "replay", run_id, "--db", str(db))
    assert code == 2 and "ran gone.yaml, which is not there: give the flow's path with --flow" in err


def test_a_failed_run_resumed_replays_as_it_ended(tmp_path: Path) -> None:
    """The answers a resume went past (the failed step's) are superseded: replay and export leave them out."""
    db = tmp_path / "runs.db"
    bad = tmp_path / "bad.yaml"
    bad.write_text("responses:\n  - {key: plan, times: 2, text: '{\"steps\": 3}'}\n")
    math = ["run", str(MATH_LOOP), "-i", "problem=180 km in 2.5 h: speed in m/s?"]
    code, out, _ = cli(*math, "--backend", "scripted", "--cassette", str(bad), "--db", str(db), "--json")
    assert code == 1 and json.loads(out)["status"] == "failed"
    run_id = json.loads(out)["run_id"]
    code, _, err = cli("runs", "resume", run_id, "--backend", "scripted", "--cassette",
                       str(MATH_LOOP_CASSETTE), "--db", str(db))
    assert code == 0, err
    code, out, err = cli("runs", "replay", run_id, "--db", str(db))
    assert code == 0 and "replayed without a model: 9 steps" in out, out + err
    code, out, _ = cli("runs", "export", run_id, "--db", str(db))
    assert code == 0 and '"steps": 3' not in out and out.count("key: plan") == 1
