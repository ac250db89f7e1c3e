"""wikipedia: the Wikipedia articles that best match a query (MediaWiki's Action API: a search, then the opening
sentences of the pages found), each with its title, its URL and a short extract, sized for a small model's window.

The API is https://LANGUAGE.wikipedia.org/w/api.php, or WIKIPEDIA_API (another MediaWiki wiki, a mirror).
"""

from __future__ import annotations

import os
import re
import urllib.parse
from typing import Any

from engine.kernel.network import get_json
from engine.kernel.tool_code import ToolError, fitted

EXTRACT = 600  # characters of a page's opening kept


def wikipedia(query: str, language: str = "en", results: int = 3) -> dict[str, Any]:
    """The `results` articles of Wikipedia in `language` that best match `query`."""
    api = os.environ.get("WIKIPEDIA_API", "").strip() or f"https://{language}.wikipedia.org/w/api.php"
    found = get_json(api, {"action": "query", "list": "search", "srsearch": query, "srlimit": results,
                           "srprop": "", "format": "json", "formatversion": 2})
    try:
        hits = [(int(hit["pageid"]), str(hit["title"])) for hit in found["query"]["search"]][:results]
    except (KeyError, TypeError, ValueError):
        raise ToolError(_unexpected(found)) from None
    if not hits:
        return {"query": query, "results": []}
    pages = get_json(api, {"action": "query", "prop": "extracts", "exintro": 1, "explaintext": 1,
                           "exsentences": 3, "pageids": "|".join(str(page) for page, _ in hits),
                           "format": "json", "formatversion": 2})
    try:
        extracts = {int(page["pageid"]): str(page.get("extract") or "") for page in pages["query"]["pages"]}
    except (KeyError, TypeError, ValueError):
        raise ToolError(_unexpected(pages)) from None
    base = f"https://{language}.wikipedia.org/wiki/"
    return {"query": query, "results": [
        {"title": title, "url": base + urllib.parse.quote(title.replace(" ", "_")),
         "extract": fitted(re.sub(r"\s+", " ", extracts.get(page, "")).strip(), EXTRACT)} for page, title in hits]}


def _unexpected(answer: Any) -> str:
    error = answer.get("error") if isinstance(answer, dict) else None
    if isinstance(error, dict) and "info" in error:
        return f"Wikipedia refused the query: {error['info']}"
    return "Wikipedia answered in a form this tool does not know (no query.search or query.pages)"
