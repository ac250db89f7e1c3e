"""The `sql_query` tool: one read-only SELECT on a SQLite database (FLOWRUN_SQL_DB, else the travel database).

The database is opened read-only and an authorizer lets the statement only read: writes, ATTACH, PRAGMA and the
like are refused by SQLite itself, whatever the text says.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

_READING = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}


def _only_reading(action: int, *_: Any) -> int:
    return sqlite3.SQLITE_OK if action in _READING else sqlite3.SQLITE_DENY


def _database() -> Path:
    if os.environ.get("FLOWRUN_SQL_DB"):
        return Path(os.environ["FLOWRUN_SQL_DB"])
    from engine.kernel.tools import load_entry  # tools are loaded by path: load the sibling module the same way

    return load_entry("travel.py:database", Path(__file__).parent)()


def sql_query(query: str, max_rows: int = 100) -> dict[str, Any]:
    """The columns and (at most `max_rows`) rows of one SELECT statement."""
    path = _database()
    if not path.is_file():
        raise ValueError(f"the SQL database {path} does not exist (set FLOWRUN_SQL_DB)")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        db.set_authorizer(_only_reading)
        cursor = db.execute(query)
        rows = cursor.fetchmany(max_rows + 1)
        columns = [c[0] for c in cursor.description or []]
    except (sqlite3.Error, sqlite3.Warning) as exc:
        raise ValueError(f"query refused or failed: {exc}; only one read-only SELECT is allowed") from None
    finally:
        db.close()
    return {"columns": columns, "rows": [list(r) for r in rows[:max_rows]], "truncated": len(rows) > max_rows}
