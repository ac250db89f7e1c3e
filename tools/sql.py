"""The `sql_query` tool: one read-only SELECT on a SQLite database (FLOWRUN_SQL_DB, else the travel database).

The database is opened read-only and an authorizer lets the statement only read, and call only the plain SQL
functions listed in FUNCTIONS: writes, ATTACH, PRAGMA, load_extension, fts3_tokenizer (which hands out a native
pointer) and the like are refused by SQLite itself, whatever the text says. The query bounds itself: it is
stopped after SECONDS, no value may be longer than MAX_BYTES, and rows stop coming (`truncated`) after max_rows or
MAX_BYTES in all. Blobs come back as hexadecimal text.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

SECONDS = 10  # under the manifest's timeout (15 s), so that a long query ends with this tool's own message
MAX_BYTES = 1_000_000  # of one value, and of all the rows returned

_READING = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE}
FUNCTIONS = frozenset({
    "abs", "char", "coalesce", "concat", "concat_ws", "format", "glob", "hex", "ifnull", "iif", "instr",
    "length", "like", "likelihood", "likely", "lower", "ltrim",
    "max", "min", "nullif", "octet_length", "printf", "quote", "random", "randomblob", "replace", "round",
    "rtrim", "sign", "soundex", "substr", "substring",
    "trim", "typeof", "unhex", "unicode", "unlikely", "upper", "zeroblob",
    "avg", "count", "group_concat", "string_agg", "sum", "total",
    "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead", "first_value",
    "last_value", "nth_value",
    "date", "time", "datetime", "julianday", "unixepoch", "strftime", "timediff", "current_date",
    "current_time", "current_timestamp",
    "acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "ceil", "ceiling", "cos", "cosh", "degrees",
    "exp", "floor", "ln", "log", "log10", "log2", "mod", "pi", "pow",
    "power", "radians", "sin", "sinh", "sqrt", "tan", "tanh", "trunc",
    "json", "jsonb", "json_array", "json_array_length", "json_error_position", "json_extract", "json_insert",
    "json_object", "json_patch",
    "json_pretty", "json_quote", "json_remove", "json_replace", "json_set", "json_type", "json_valid",
    "json_group_array",
    "json_group_object",
    "match", "snippet", "highlight", "bm25", "offsets", "matchinfo",
})


def _only_reading(action: int, _: Any, name: Any, *__: Any) -> int:
    if action in _READING or (action == sqlite3.SQLITE_FUNCTION and str(name).lower() in FUNCTIONS):
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _database() -> Path:
    if os.environ.get("FLOWRUN_SQL_DB"):
        return Path(os.environ["FLOWRUN_SQL_DB"])
    from engine.kernel.tool_code import load_entry  # tools are loaded by path: load the sibling module the same way

    return load_entry("travel.py:database", Path(__file__).parent)()


def _value(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes) else value


def sql_query(query: str, max_rows: int = 100) -> dict[str, Any]:
    """The columns and (at most `max_rows`, and MAX_BYTES in all) rows of one SELECT statement."""
    path = _database()
    if not path.is_file():
        raise ValueError(f"the SQL database {path} does not exist (set FLOWRUN_SQL_DB)")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    deadline = time.monotonic() + SECONDS
    rows: list[list[Any]] = []
    truncated, size = False, 0
    try:
        db.set_authorizer(_only_reading)
        db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_BYTES)
        db.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)  # a true result interrupts it
        cursor = db.execute(query)
        columns = [c[0] for c in cursor.description or []]
        for row in cursor:
            values = [_value(v) for v in row]
            size += sum(len(v) if isinstance(v, str) else 8 for v in values)
            if len(rows) == max_rows or size > MAX_BYTES:
                truncated = True
                break
            rows.append(values)
    except (sqlite3.Error, sqlite3.Warning) as exc:
        if str(exc) == "interrupted":  # by the progress handler
            raise ValueError(f"the query took longer than {SECONDS} s and was stopped: make it do less") from None
        raise ValueError(f"query refused or failed: {exc}; only one read-only SELECT is allowed") from None
    finally:
        db.close()
    return {"columns": columns, "rows": rows, "truncated": truncated}
