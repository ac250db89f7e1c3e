"""http_get: the title and text of a web page (or a plain-text or JSON document) on a host the user allows
(HTTP_GET_HOSTS: a comma-separated list of names, *.names for a domain and its subdomains, or URLs), cut to a small
model's window. HTML is read with BeautifulSoup and the stdlib's html.parser: scripts, styles and templates dropped,
a line a block, spaces folded. Anything else (images, PDFs, archives) is refused: the model could not read it.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
from bs4 import BeautifulSoup, CData, NavigableString, PageElement, Tag

from engine.kernel.network import allowed, get, text, text_encoding, variable
from engine.kernel.tool_code import ToolError, fitted

LONGEST = 8000  # characters of text a call may ask for
HTML = frozenset({"text/html", "application/xhtml+xml"})
ACCEPT = "text/html, application/xhtml+xml, text/plain;q=0.9, application/json;q=0.9, text/*;q=0.8"
DROPPED = {"script", "style", "noscript", "template", "title"}  # no text a reader sees (the title is apart)
BLOCKS = {"address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "figcaption", "figure",
          "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p",
          "pre", "section", "table", "td", "th", "tr", "ul"}


def http_get(url: str, characters: int = 2000) -> dict[str, Any]:
    """The page at `url` (http or https, on a host HTTP_GET_HOSTS lists): the URL it ended at after redirects, its
    title and its text, cut to `characters`."""
    hosts = variable("HTTP_GET_HOSTS", "the hosts it may get pages from (a comma-separated list of names and "
                                       "*.names)")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (a port that is no number raises here, not later)
    except ValueError:
        raise ToolError(f"not a URL http_get can get: {fitted(url, 200)!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ToolError(f"http_get gets http:// and https:// URLs, not {fitted(url, 200)!r}")
    if not allowed(parts.hostname, ("$HTTP_GET_HOSTS",)):  # said with the list (a redirect's refusal names none)
        raise ToolError(f"{parts.hostname} is not among the hosts HTTP_GET_HOSTS lists ({fitted(hosts, 200)})")
    page = get(url, headers={"Accept": ACCEPT})
    kind = page.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind in HTML or kind.startswith("text/") or kind == "application/json" or kind.endswith("+json"):
        wide = (text_encoding(page) or "").startswith(("utf-16", "utf-32"))  # NUL bytes in its text
        if b"\0" in page.content and not wide:  # text has none: binary data under a text type
            raise ToolError(f"{page.url.host} answered binary data labelled {kind}")
        title, words = _html(page) if kind in HTML else ("", _fold(text(page)))
    else:
        raise ToolError(f"{page.url.host} answered {kind or 'no content type'}, which http_get does not read "
                        "(it reads HTML, plain text and JSON)")
    return {"url": str(page.url), "title": title, "text": fitted(words, min(characters, LONGEST))}


def _html(page: httpx.Response) -> tuple[str, str]:
    """The title and the text a reader sees of an HTML page (in the charset its header or markup declares)."""
    soup = BeautifulSoup(page.content, "html.parser", from_encoding=text_encoding(page))
    title = re.sub(r"\s+", " ", soup.title.get_text()).strip() if soup.title else ""
    return title, _fold("".join(_text(soup)))


def _text(soup: BeautifulSoup) -> Iterator[str]:
    """The strings of the page in order, a line break at each block's start and end, what a reader does not see
    left out. One pass over the tree with a stack of its own: no mutation (bs4 inserts take time in the depth of the
    tree, so a page of nested blocks would take hours) and no recursion (a page may nest 100,000 deep)."""
    pending: list[tuple[PageElement, bool]] = [(soup, False)]  # a node, and whether it is its block's end
    while pending:
        node, end = pending.pop()
        if end:
            yield "\n"
        elif type(node) in (NavigableString, CData):  # not comments, doctypes or processing instructions
            yield str(node)
        elif isinstance(node, Tag) and node.name not in DROPPED:
            if node.name in BLOCKS:
                yield "\n"
                pending.append((node, True))
            pending.extend((child, False) for child in reversed(node.contents))


def _fold(words: str) -> str:
    """`words` with each line's spaces folded into one, and no empty lines."""
    lines = (re.sub(r"\s+", " ", line).strip() for line in words.splitlines())
    return "\n".join(line for line in lines if line)
