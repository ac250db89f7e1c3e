"""Regular expressions that files flowrun runs but does not control give it (a cassette's `prompt`, a test case's
`matches`): Python's syntax, matched in bounded time.

Such a pattern can backtrack catastrophically (`(a|aa)+$` on a prompt of a hundred `a` and a `!` would not end in
our lifetime), so matching goes through the `regex` package, whose timeout stops the matching itself. The
alternatives were worse: RE2 runs in linear time but refuses backreferences and lookarounds that cassettes may use,
and a check of the pattern for nested repeats would refuse sound patterns and still miss slow ones.
"""

from __future__ import annotations

import regex

MATCH_SECONDS = 1.0  # thousands of times what a sound pattern takes on a prompt; a slow one is cut here


class PatternError(ValueError):
    """A pattern that is not a regular expression, or that took too long to match; the message says which."""


def compile_pattern(text: str) -> regex.Pattern[str]:
    """`text` compiled as a regular expression (Python's syntax)."""
    try:
        return regex.compile(text)
    except regex.error as exc:
        raise PatternError(f"not a valid regular expression: {exc}") from None


def found_in(pattern: regex.Pattern[str], text: str) -> bool:
    """Whether `pattern` matches somewhere in `text`; a PatternError if it takes over MATCH_SECONDS to tell."""
    try:
        return pattern.search(text, timeout=MATCH_SECONDS) is not None
    except TimeoutError:
        raise PatternError(f"the regular expression /{pattern.pattern}/ took over {MATCH_SECONDS:g} s to match "
                           f"{len(text):,} characters: simplify it (a repeat inside a repeat, like (a+)+, can "
                           "backtrack without end)") from None
