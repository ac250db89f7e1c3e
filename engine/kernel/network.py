"""HTTP for tool code (httpx), within what its manifest allows: only the hosts of its `hosts` (every redirect
checked the same way, and the caller's own headers sent to the first host only), a timeout per request (its whole
answer included), a few tries after a 429 or a 5xx (waiting as Retry-After says, within bounds), and at most
MAX_RESPONSE bytes of an answer, decoded (gzip or deflate, inflated a bounded piece at a time). Every failure is a
ToolError whose message says what to do.

The allow-list binds tool code that reaches the network through here, as the bundled tools do; code that opens
sockets itself is not confined (a worker process is no network sandbox).
"""

from __future__ import annotations

import codecs
import ipaddress
import os
import random
import time
import urllib.parse
import zlib
from collections.abc import Collection, Iterator
from typing import Any

import httpx

from engine.jsontext import parse_json
from engine.kernel.tool_code import ToolError, ToolTimeout, reachable, running

MAX_RESPONSE = 1 << 20  # bytes of an answer read, at most
TRIES = 3  # after a 429 or a 5xx, or a connection that failed
WAIT = 0.5  # seconds before the second try; doubled after, with full jitter
LONGEST_WAIT = 5.0  # seconds a Retry-After may make it wait
TIMEOUT = 10.0  # seconds a request may take (the tool's own timeout bounds the whole call)
RETRIED = frozenset({429, 500, 502, 503, 504})


def variable(name: str, what: str) -> str:
    """The value of environment variable `name` (`what` it is, for the message when it is not set)."""
    value = os.environ.get(name, "").strip()
    if not value:
        raise ToolError(f"tool {running.get()} needs {what}: set the environment variable {name}")
    return value


def allowed(host: str, hosts: tuple[str, ...] | None = None) -> bool:
    """Whether `host` is one the running tool's manifest lists (a name, *.name for it and its subdomains, or
    $VARIABLE for what that variable holds: one URL, standing for its host, or a comma-separated list of names and
    *.names). Names compare in their ASCII (IDNA) form; an IP address only as itself, never under a *.name."""
    host = _ascii(host.rstrip("."))
    literal = _is_address(host)
    for entry in _entries(reachable.get() if hosts is None else hosts):
        wild = entry.startswith("*.")
        name = _ascii(entry.removeprefix("*."))
        if host == name or (wild and not literal and host.endswith("." + name)):
            return True
    return False


def _entries(hosts: tuple[str, ...]) -> Iterator[str]:
    """The names and *.names that `hosts` stand for, each $VARIABLE read (one that is not set stands for none; an
    entry that is no host, none either)."""
    for entry in hosts:
        if not entry.startswith("$"):
            yield entry
            continue
        value = os.environ.get(entry[1:], "").strip()
        # a URL is one host (a comma in its query is no list); anything else, a list of names
        for item in [value] if "://" in value else value.split(","):
            try:
                name = urllib.parse.urlsplit(item.strip() if "://" in item else "//" + item.strip()).hostname
            except ValueError:  # "[::1", say: no host
                continue
            if name and name.rstrip("."):
                yield name.rstrip(".")


def get(url: str, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None, *,
        read: Collection[int] = ()) -> httpx.Response:
    """The answer to `GET url` (with `params`), read whole (at most MAX_RESPONSE bytes, decoded) within TIMEOUT
    seconds, once it is a success: tried again after a 429, a 5xx or a failed connection, a few times; ToolError
    when it stays a failure, or when the URL or a redirect leads to a host the tool may not reach. The caller's
    `headers` (a key, say) go only to the URL's own host, not to one a redirect leads to. An error status in `read`
    is answered as it came (neither tried again nor an error here), for a caller whose API explains its errors in
    the body."""
    host = _host(url)
    given = {"Accept-Encoding": "gzip, deflate", **(headers or {})}
    hooks = {"request": [_check_host, _private(host, set(headers or {}) - {"Accept"})]}
    for attempt in range(1, TRIES + 1):
        try:
            with httpx.Client(timeout=TIMEOUT, follow_redirects=True, max_redirects=5, event_hooks=hooks) as client, \
                    client.stream("GET", url, params=params, headers=given) as response:
                if response.status_code in RETRIED and response.status_code not in read and attempt < TRIES:
                    time.sleep(_wait(attempt, response.headers.get("retry-after")))
                    continue
                if response.is_error and response.status_code not in read:
                    raise ToolError(f"{host} answered {response.status_code} {response.reason_phrase}"
                                    + (f" after {attempt} tries" if attempt > 1 else ""))
                body = _body(response, time.monotonic() + TIMEOUT)
                kept = [(k, v) for k, v in response.headers.multi_items()
                        if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
                return httpx.Response(response.status_code, headers=kept, content=body, request=response.request)
        except httpx.TimeoutException:
            raise ToolTimeout(f"{host} did not answer within {TIMEOUT:g} s") from None
        except httpx.TooManyRedirects:
            raise ToolError(f"{host} redirected more than 5 times") from None
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            if attempt == TRIES:
                raise ToolError(f"{host} cannot be reached: {exc}") from None
            time.sleep(_wait(attempt, None))
        except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError) as exc:
            raise ToolError(f"not a URL the tool can get: {exc}") from None
    raise AssertionError("unreachable: the last try returns or raises")


def text_encoding(response: httpx.Response) -> str | None:
    """The charset `response` declares, if it is a text encoding Python knows (not `hex` or `base64`, which its
    codecs also name)."""
    charset = response.charset_encoding
    try:
        return codecs.lookup(charset).name if charset and codecs.lookup(charset)._is_text_encoding else None  # type: ignore[attr-defined]
    except LookupError:
        return None


def text(response: httpx.Response) -> str:
    """The text of `response`: in the charset it declares when that is a text encoding (text_encoding), else UTF-8;
    what does not decode, replaced."""
    return response.content.decode(text_encoding(response) or "utf-8", errors="replace")


def get_json(url: str, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> Any:
    """The JSON an API answers `GET url` with (as `get`); ToolError when it is not JSON."""
    response = get(url, params, {"Accept": "application/json", **(headers or {})})
    try:
        return parse_json(text(response))  # strict: no NaN, no nesting too deep to read
    except ValueError:
        raise ToolError(f"{_host(url)} did not answer JSON") from None


def _check_host(request: httpx.Request) -> None:
    """Refuse a request (the first, or a redirect's) to a host the running tool's manifest does not list."""
    if request.url.scheme not in ("http", "https"):
        raise ToolError(f"tool {running.get()} gets only http:// and https:// URLs, not {str(request.url)[:200]!r}")
    host = request.url.raw_host.decode("ascii", errors="replace")
    if not allowed(host):
        listed = ", ".join(reachable.get()) or "none"
        raise ToolError(f"tool {running.get()} may not reach {host} (its manifest's hosts: {listed})")


def _private(origin: str, names: set[str]) -> Any:
    """A request hook taking the caller's own headers (`names`: a key, say) off a request to a host but `origin`."""
    def hook(request: httpx.Request) -> None:
        if _ascii(request.url.host) != _ascii(origin):
            for name in names:
                request.headers.pop(name, None)
    return hook


def _body(response: httpx.Response, deadline: float) -> bytes:
    """The body of `response`, decoded as its Content-Encoding says (gzip or deflate: nothing else was asked for),
    at most MAX_RESPONSE bytes of it: decoded here, a bounded piece at a time, so that a small answer that inflates
    to gigabytes stops at the cap. ToolTimeout past `deadline` (a server sending a byte at a time)."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    decoder = {"identity": None, "": None, "gzip": zlib.decompressobj(16 + zlib.MAX_WBITS),
               "x-gzip": zlib.decompressobj(16 + zlib.MAX_WBITS), "deflate": zlib.decompressobj()}.get(encoding, False)
    if decoder is False:
        raise ToolError(f"{response.url.host} answered in an encoding the tool does not read ({encoding[:50]})")
    body = bytearray()
    try:
        for chunk in response.iter_raw():
            while chunk:
                room = MAX_RESPONSE + 1 - len(body)
                body += decoder.decompress(chunk, room) if decoder else chunk[:room]
                chunk = decoder.unconsumed_tail if decoder else b""
                if len(body) > MAX_RESPONSE:
                    raise ToolError(f"{response.url.host} answered more than {MAX_RESPONSE:,} bytes")
            if time.monotonic() > deadline:
                raise ToolTimeout(f"{response.url.host} did not answer within {TIMEOUT:g} s")
        if decoder:
            body += decoder.flush()
    except zlib.error as exc:
        raise ToolError(f"{response.url.host} answered a body that does not decode as {encoding}: {exc}") from None
    if len(body) > MAX_RESPONSE:
        raise ToolError(f"{response.url.host} answered more than {MAX_RESPONSE:,} bytes")
    return bytes(body)


def _wait(attempt: int, retry_after: str | None) -> float:
    """Seconds before try `attempt` + 1: as Retry-After says (seconds, within LONGEST_WAIT), else backoff."""
    if retry_after is not None and retry_after.strip().isascii() and retry_after.strip().isdecimal():
        return min(float(retry_after), LONGEST_WAIT)
    return random.uniform(0, min(LONGEST_WAIT, WAIT * 2 ** (attempt - 1)))


def _host(url: str) -> str:
    try:
        return urllib.parse.urlsplit(url).hostname or url
    except ValueError:
        return url


def _ascii(name: str) -> str:
    """A host name in the ASCII form hosts take on the wire (IDNA), lowercase; as it is where it has none."""
    try:
        return httpx.URL(f"http://{name}/").raw_host.decode("ascii").lower()
    except (httpx.InvalidURL, UnicodeError, ValueError):
        return name.lower()


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
