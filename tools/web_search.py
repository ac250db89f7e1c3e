"""web_search: web pages that match a query, from the search provider configured (Bing's Web Search API is gone):
a SearXNG instance (SEARXNG_URL: its JSON API, self-hostable, no key), Brave Search (BRAVE_API_KEY) or Google
Programmable Search (GOOGLE_API_KEY and GOOGLE_CSE_ID), the first one set in that order. Each result is a title, a
URL and a snippet, sized for a small model's window.

BRAVE_SEARCH_API and GOOGLE_SEARCH_API name other endpoints of those APIs (a proxy, a test's fake).
"""

from __future__ import annotations

import html
import os
import re
from typing import Any

from engine.kernel.network import get_json
from engine.kernel.tool_code import ToolError, fitted

SNIPPET = 300  # characters of a result's snippet kept
BRAVE = "https://api.search.brave.com/res/v1/web/search"
GOOGLE = "https://www.googleapis.com/customsearch/v1"


def web_search(query: str, results: int = 5) -> dict[str, Any]:
    """The first `results` web pages the configured provider finds for `query`."""
    if searxng := _set("SEARXNG_URL"):
        found = get_json(searxng.rstrip("/") + "/search", {"q": query, "format": "json"})
        provider, items, fields = "searxng", _list(found, "results"), ("title", "url", "content")
    elif key := _set("BRAVE_API_KEY"):
        found = get_json(_set("BRAVE_SEARCH_API") or BRAVE, {"q": query, "count": results},
                         {"X-Subscription-Token": key})
        provider, items, fields = "brave", _list(found.get("web") if isinstance(found, dict) else None, "results"), \
            ("title", "url", "description")
    elif (key := _set("GOOGLE_API_KEY")) and (engine := _set("GOOGLE_CSE_ID")):
        found = get_json(_set("GOOGLE_SEARCH_API") or GOOGLE, {"key": key, "cx": engine, "q": query,
                                                                "num": results})
        provider, items, fields = "google", _list(found, "items", empty=True), ("title", "link", "snippet")
    else:
        raise ToolError("tool web_search needs a search provider: set SEARXNG_URL (a SearXNG instance), or "
                        "BRAVE_API_KEY, or GOOGLE_API_KEY and GOOGLE_CSE_ID")
    title, url, snippet = fields
    pages = [{"title": _clean(item.get(title)), "url": str(item.get(url) or ""), "snippet": _clean(item.get(snippet))}
             for item in items if isinstance(item, dict) and item.get(url)]
    return {"query": query, "provider": provider, "results": pages[:results]}


def _set(name: str) -> str:
    return os.environ.get(name, "").strip()


def _list(found: Any, name: str, *, empty: bool = False) -> list[Any]:
    """The list `found[name]` (Google leaves `items` out when nothing matched: `empty`)."""
    items = found.get(name, [] if empty else None) if isinstance(found, dict) else None
    if not isinstance(items, list):
        raise ToolError(f"the search provider answered in a form this tool does not know (no {name} list)")
    return items


def _clean(text: Any) -> str:
    """Text of a title or snippet: tags (Brave marks matches with <strong>) and entities gone, spaces folded."""
    text = html.unescape(re.sub(r"<[^>]*>", "", str(text or "")))
    text = re.sub(r"\s+", " ", text).strip()
    return fitted(text, SNIPPET)
