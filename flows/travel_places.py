"""Write the travel database's cities and states into travel_agent.yaml, as the `$defs` its parse is constrained to.

`python flows/travel_places.py` rewrites the lines between `# BEGIN places` and `# END places` of the flow file
beside it (or of the file given as an argument); tests/test_travel_agent.py checks that they match the database.
"""

from __future__ import annotations

import re
import sqlite3
import sys
from pathlib import Path

from engine.kernel.tool_code import load_entry
from engine.resources import data_dir

FLOW = Path(__file__).with_name("travel_agent.yaml")
BLOCK = re.compile(r"^( *)# BEGIN places.*?\n(.*?)^ *# END places\n", re.M | re.S)


def places() -> tuple[list[str], list[str]]:
    """The database's cities and states, each sorted."""
    database = load_entry("travel.py:database", data_dir("tools"))()
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT name, state FROM cities").fetchall()
    finally:
        db.close()
    return sorted(name for name, _ in rows), sorted({state for _, state in rows})


def block(indent: str) -> str:
    """The `$defs` lines, indented by `indent`."""
    cities, states = places()
    return (f"{indent}$defs:\n"
            f"{indent}  city: {{enum: [{', '.join(cities)}]}}\n"
            f"{indent}  state: {{enum: [{', '.join(states)}]}}\n")


def with_places(text: str) -> str:
    """Flow text `text` with its places block rewritten from the database."""
    found = BLOCK.search(text)
    if found is None:
        raise ValueError("no `# BEGIN places` ... `# END places` block in the flow")
    start, end = found.span(2)
    return text[:start] + block(found.group(1)) + text[end:]


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else FLOW
    path.write_text(with_places(path.read_text()))
    print(f"wrote the places of the travel database into {path}")
