"""sql_analyst's answer is the rows of its last query, as the database gave them (issue 12): the model writes the
query, a query that finds nothing is fixed (decided from data), and no value is retyped by the model."""

from __future__ import annotations

import json
from pathlib import Path

from engine.answers import problems
from engine.kernel.tool_code import load_entry
from engine.resources import data_dir
from tests.conftest import FLOWS
from tests.test_interpreter import run

FLOW = FLOWS / "sql_analyst.yaml"


def query(sql: str, step: str = "write_query") -> dict[str, str]:
    return {"key": step, "text": json.dumps({"tool": "sql_query", "arguments": {"query": sql}})}


def test_every_row_and_column_is_in_the_answer_with_the_values_unrounded(tmp_path: Path) -> None:
    question = {"question": "What is the average restaurant rating of each Colorado city?", "tables": "restaurants"}
    sql = ("SELECT city, AVG(rating) AS rating FROM restaurants WHERE city IN ('Boulder', 'Denver') "
           "GROUP BY city ORDER BY city")
    outcome, _ = run(FLOW, [query(sql)], question, tmp_path)
    assert outcome.path == ["write_query", "result_ok", "answer"]
    rows = load_entry("sql.py:sql_query", data_dir("tools"))(sql)["rows"]
    assert len(rows) == 2 and outcome.answer == "; ".join(f"city: {c}, rating: {r}" for c, r in rows)

def test_a_query_that_finds_nothing_is_fixed_and_the_fix_answers(tmp_path: Path) -> None:
    question = {"question": "How many cities does Texas have?", "tables": "cities(name, state)"}
    outcome, _ = run(FLOW, [query("SELECT COUNT(*) AS n FROM cities GROUP BY state HAVING state = 'TX'"),
                            query("SELECT COUNT(*) AS n FROM cities WHERE state = 'Texas'", "fix_query")],
                     question, tmp_path)
    assert outcome.path == ["write_query", "result_ok", "retries_left", "fix_query", "result_ok", "answer"]
    assert outcome.answer == "n: 5"
    assert problems({"number": 5}, outcome.answer) == []  # as `flowrun eval` reads it
