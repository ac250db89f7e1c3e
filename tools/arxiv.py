"""arxiv_search: the arXiv papers that best match a query (the arXiv API's Atom feed, read with defusedxml: no
entity expansion, no external entities), each with its title, authors, date, abstract page and the start of its
abstract, sized for a small model's window.

The API is http://export.arxiv.org/api/query, or ARXIV_API (a mirror).
"""

from __future__ import annotations

import os
import re
from typing import Any
from xml.etree.ElementTree import Element

from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException

from engine.kernel.network import get
from engine.kernel.tool_code import ToolError, fitted

ATOM = "{http://www.w3.org/2005/Atom}"
SUMMARY = 600  # characters of an abstract kept
AUTHORS = 5  # authors named; "et al." after


def arxiv_search(query: str, results: int = 3) -> dict[str, Any]:
    """The `results` arXiv papers that best match `query`."""
    api = os.environ.get("ARXIV_API", "").strip() or "http://export.arxiv.org/api/query"
    answer = get(api, {"search_query": f"all:{query}", "start": 0, "max_results": results,
                       "sortBy": "relevance"}, {"Accept": "application/atom+xml"})
    try:
        feed = ElementTree.fromstring(answer.content, forbid_dtd=True)
    except (ElementTree.ParseError, DefusedXmlException) as exc:
        raise ToolError(f"arXiv did not answer an Atom feed this tool can read ({type(exc).__name__})") from None
    if feed.tag != f"{ATOM}feed":
        raise ToolError("arXiv did not answer an Atom feed this tool can read (no feed)")
    papers = []
    for entry in feed.findall(f"{ATOM}entry")[:results]:  # a feed may hold more than asked
        title = _text(entry, "title")
        if title == "Error":  # how the API says a query is wrong: an entry whose summary says why
            raise ToolError(f"arXiv refused the query: {_text(entry, 'summary')}")
        authors = [_text(author, "name") for author in entry.findall(f"{ATOM}author")]
        papers.append({"title": title, "authors": ", ".join(authors[:AUTHORS]) + (" et al." if len(authors) >
                                                                                      AUTHORS else ""),
                       "published": _text(entry, "published")[:10], "url": _text(entry, "id"),
                       "summary": fitted(_text(entry, "summary"), SUMMARY)})
    return {"query": query, "results": papers}


def _text(element: Element, name: str) -> str:
    found = element.find(f"{ATOM}{name}")
    return re.sub(r"\s+", " ", found.text or "").strip() if found is not None else ""

