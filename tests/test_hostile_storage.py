"""Hardening of storage, run records and the `runs` commands against hostile or careless input (issue 11): run-id
prefixes, databases opened by several processes at once, runs resumed twice, signals, retention, and model text
printed to a terminal."""

from __future__ import annotations

import time
from pathlib import Path

from engine.kernel.storage import RunRow, StepRecord, Storage
from tests.test_run_cli import cli


def stored_run(db: Path, run_id: str, *, status: str = "finished", answer: object = "done", output: object = "out",
               created: float | None = None, **row: object) -> None:
    """A run `run_id` with one step, stored in `db` as a run of math_agent would be."""
    storage = Storage(f"sqlite:///{db}")
    storage.start_run(RunRow(id=run_id, agent="MathAgent", flow="math_agent.yaml", status=status, inputs={"q": "x"},
                             answer=answer, created=created or time.time(), **row))
    storage.record_step(StepRecord(run_id, "solve", 1, "process", None, output, None, None, 3, time.time(),
                                   time.time()))
    storage.close()


# 7. Run-id prefixes


def test_a_run_id_prefix_is_matched_exactly_not_as_a_pattern(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    stored_run(db, "0b48a" + "0" * 27)
    for pattern in ("%b48a", "_b48a", "0B48A", "%"):
        code, out, err = cli("runs", "show", pattern, "--db", str(db))
        assert code == 2 and "is not the start of a run id" in err and "0-9, a-f" in err, (pattern, out)
    code, out, _ = cli("runs", "show", "0b48", "--db", str(db))
    assert code == 0 and f"run 0b48a{'0' * 27}" in out
    code, _, err = cli("runs", "show", "b48a", "--db", str(db))  # inside the id, not at its start
    assert code == 2 and "no run with an id starting 'b48a'" in err
    code, _, err = cli("runs", "list", "--batch", "%", "--db", str(db))
    assert code == 2 and "is not the start of a batch id" in err


# 14. Model text printed to a terminal


HOSTILE = "plan\x1b]52;c;cm0gLXJmIH4=\x07 ready\x1b[2J\x1b[1;1H\x1b]0;pwned\x1b\\\r\u202eevil\x9b31m"


def test_stored_model_text_is_printed_without_control_sequences(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    run_id = "c0ffee" + "0" * 26
    stored_run(db, run_id, status="failed", answer=None, output={"text": HOSTILE}, error=f"step solve: {HOSTILE}")
    stored_run(db, "d" * 32, answer=HOSTILE)
    shown = [cli("runs", "show", run_id, "--db", str(db))[1], cli("runs", "show", "d" * 32, "--db", str(db))[1],
             cli("runs", "list", "--db", str(db))[1]]
    for out in shown:
        assert not any(c in out for c in "\x1b\x07\r\x9b\u202e"), repr(out)
    assert "plan ready" in shown[1] and "evil31m" in shown[1]  # the text itself is still shown
    assert "step solve: plan ready" in shown[0]
