"""Exchange rates: exchange_rate asks a rates service (RATES_URL) for today's rate, and reference_rate gives a rate
from a dated table that ships with flowrun, for when the service is down.

The service answers `GET {RATES_URL}?base=USD&quote=EUR` with JSON `{"rate": 0.92, "date": "2026-11-30"}` (the
shape of the common free rate APIs, reduced to one pair). Any error (no RATES_URL, the service unreachable, a
server error, an answer that is not that JSON) is a ToolError, so that a flow's `retry` and `catch` can handle it.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from engine.kernel.tools import ToolError

TIMEOUT = 3.0  # seconds for the service to answer (the manifest's timeout bounds the whole call)
MAX_ANSWER = 65_536  # bytes of an answer read; a rate is a few dozen
# Units of each currency one US dollar bought on the table's date (rounded; enough to quote, not to trade)
REFERENCE_DATE = "2026-01-02"
REFERENCE = {"USD": 1.0, "EUR": 0.853, "GBP": 0.743, "JPY": 156.8, "CHF": 0.792, "CAD": 1.372, "AUD": 1.497,
             "CNY": 6.99, "INR": 89.9, "MXN": 18.0}


def exchange_rate(base: str, quote: str) -> dict[str, Any]:
    """Units of `quote` one unit of `base` buys today, from the rates service, with the date it gives."""
    url = os.environ.get("RATES_URL")
    if not url:
        raise ToolError("no rates service is set: set RATES_URL to one (see tools/rates.py for what it answers)")
    query = urllib.parse.urlencode({"base": base, "quote": quote})
    try:
        with urllib.request.urlopen(f"{url}?{query}", timeout=TIMEOUT) as response:
            body = response.read(MAX_ANSWER + 1)
    except urllib.error.HTTPError as exc:
        raise ToolError(f"the rates service answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ToolError(f"the rates service cannot be reached: {getattr(exc, 'reason', exc)}") from None
    if len(body) > MAX_ANSWER:
        raise ToolError(f"the rates service answered more than {MAX_ANSWER} bytes")
    try:
        data = json.loads(body)
        rate, day = data["rate"], data["date"]
    except (ValueError, TypeError, KeyError):
        raise ToolError('the rates service did not answer {"rate": number, "date": "YYYY-MM-DD"}') from None
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not rate > 0 or not isinstance(day, str):
        raise ToolError(f"the rates service answered a rate of {rate!r} on {day!r}")
    return {"base": base, "quote": quote, "rate": rate, "date": day}


def reference_rate(base: str, quote: str) -> dict[str, Any]:
    """Units of `quote` one unit of `base` bought on REFERENCE_DATE, from the table."""
    return {"base": base, "quote": quote, "rate": round(REFERENCE[quote] / REFERENCE[base], 6),
            "date": REFERENCE_DATE}
