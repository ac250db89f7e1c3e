"""Exchange rates: exchange_rate asks a rates service (RATES_URL) for today's rate, and reference_rate gives a rate
from a dated table that ships with flowrun, for when the service is down.

The service answers `GET {RATES_URL}?base=USD&quote=EUR` with JSON `{"rate": 0.92, "date": "2026-11-30"}` (the
shape of the common free rate APIs, reduced to one pair), reached through engine.kernel.network (the host of
RATES_URL only; a 429 or 5xx tried again a few times). Any error (no RATES_URL, the service unreachable or failing,
an answer that is not that JSON) is a ToolError, so that a flow's `retry` and `catch` can handle it.
"""

from __future__ import annotations

import re
from typing import Any

from engine.kernel.network import get_json, variable
from engine.kernel.tools import ToolError

# Units of each currency one US dollar bought on the table's date (rounded; enough to quote, not to trade)
REFERENCE_DATE = "2026-01-02"
REFERENCE = {"USD": 1.0, "EUR": 0.853, "GBP": 0.743, "JPY": 156.8, "CHF": 0.792, "CAD": 1.372, "AUD": 1.497,
             "CNY": 6.99, "INR": 89.9, "MXN": 18.0}


def exchange_rate(base: str, quote: str) -> dict[str, Any]:
    """Units of `quote` one unit of `base` buys today, from the rates service, with the date it gives."""
    url = variable("RATES_URL", "a rates service (see tools/rates.py for what it answers)")
    data = get_json(url, {"base": base, "quote": quote})
    rate, day = (data.get("rate"), data.get("date")) if isinstance(data, dict) else (None, None)
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not rate > 0 or not isinstance(day, str) \
            or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
        raise ToolError('the rates service did not answer {"rate": a number above 0, "date": "YYYY-MM-DD"}')
    return {"base": base, "quote": quote, "rate": rate, "date": day}


def reference_rate(base: str, quote: str) -> dict[str, Any]:
    """Units of `quote` one unit of `base` bought on REFERENCE_DATE, from the table."""
    return {"base": base, "quote": quote, "rate": round(REFERENCE[quote] / REFERENCE[base], 6),
            "date": REFERENCE_DATE}
