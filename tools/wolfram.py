"""wolfram_alpha: what Wolfram|Alpha computes or knows about a query (its LLM API: plain text written for language
models: the input as understood, the results, a link to the full page), cut to a small model's window.

The API is https://www.wolframalpha.com/api/v1/llm-api, or WOLFRAM_API (a proxy, a test's fake); it needs an AppID
(WOLFRAM_APP_ID) of the LLM API. It explains its errors in the body: 501 when it cannot interpret the input (often
with inputs to try instead), 403 when the AppID is invalid or missing, 400 when the input is missing.
"""

from __future__ import annotations

import os
from typing import Any

from engine.kernel.network import get, text, variable
from engine.kernel.tool_code import ToolError, fitted

API = "https://www.wolframalpha.com/api/v1/llm-api"
ANSWER = 1500  # characters of an answer kept: asked of the API (maxchars), and held here if it gives more
EXPLANATION = 300  # characters of an error's explanation kept


def wolfram_alpha(query: str) -> dict[str, Any]:
    """What Wolfram|Alpha answers to `query` (a computation, a conversion, a fact), as text."""
    appid = variable("WOLFRAM_APP_ID", "a Wolfram|Alpha AppID (of the LLM API, from developer.wolframalpha.com)")
    api = os.environ.get("WOLFRAM_API", "").strip() or API
    answer = get(api, {"input": query, "appid": appid, "maxchars": ANSWER}, {"Accept": "text/plain"},
                 read=(400, 403, 501))
    said = text(answer).strip()
    if answer.status_code == 501:
        raise ToolError(f"Wolfram|Alpha could not interpret the input: {fitted(said, EXPLANATION)}")
    if answer.status_code == 403:
        raise ToolError(f"Wolfram|Alpha refused the AppID in WOLFRAM_APP_ID: {fitted(said, EXPLANATION)}")
    if answer.status_code == 400:
        raise ToolError(f"Wolfram|Alpha got no input: {fitted(said, EXPLANATION)}")
    kind = answer.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "text/plain" or not said:
        raise ToolError(f"Wolfram|Alpha did not answer the plain text of its LLM API ({kind or 'no type'}"
                        f"{', empty' if not said else ''})")
    return {"query": query, "answer": fitted(said, ANSWER)}
