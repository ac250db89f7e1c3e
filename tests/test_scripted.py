"""The scripted backend: cassette matching, token streaming, stopping and resuming."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.llm.base import ITEMS_ROOM, STRING_ROOM, Request, bounded
from engine.llm.scripted import CassetteError, ScriptedBackend, tokenize


@given(st.text())
def test_tokens_join_back_to_the_text_and_are_counted_exactly(text: str) -> None:
    assert "".join(tokenize(text)) == text
    assert ScriptedBackend([]).count_tokens([{"role": "user", "content": text}]) == len(tokenize(text))


def ask(backend: ScriptedBackend, key: str = "", prompt: str = "hello", stop_after: int | None = None, resume=None):
    seen: list[str] = []

    def on_token(token: str) -> bool:
        seen.append(token)
        return stop_after is not None and len(seen) >= stop_after

    result = asyncio.run(backend.generate(Request([{"role": "user", "content": prompt}], key=key), on_token, resume))
    return result, seen


def test_matching_by_key_then_prompt_then_order() -> None:
    backend = ScriptedBackend.from_responses([
        {"text": "first unkeyed"},
        {"key": "parse", "text": "parsed once"},
        {"key": "parse", "text": "parsed twice"},
        {"prompt": "(?i)state or.*city", "text": "state"},
        {"text": "second unkeyed"},
    ])
    assert ask(backend, key="parse")[0].text == "parsed once"
    assert ask(backend, prompt="Is it a State or a city?")[0].text == "state"
    assert ask(backend, key="parse")[0].text == "parsed twice"
    assert ask(backend, key="other")[0].text == "first unkeyed"
    assert ask(backend)[0].text == "second unkeyed"
    with pytest.raises(CassetteError, match="no answer left"):
        ask(backend, key="parse")


def test_stop_and_resume_give_the_uninterrupted_text() -> None:
    text = "one two three four five six"
    whole, _ = ask(ScriptedBackend.from_responses([{"text": text}]))
    backend = ScriptedBackend.from_responses([{"text": text}])
    first, seen = ask(backend, stop_after=2)
    assert (first.finish, first.text, first.completion_tokens, seen) == ("suspended", "one two", 2, ["one", " two"])
    second, _ = ask(backend, resume=first.snapshot)
    assert (second.finish, second.text, second.completion_tokens) == ("stop", whole.text, 4)


def test_max_tokens_cuts_the_answer() -> None:
    backend = ScriptedBackend.from_responses([{"text": "a b c d"}])
    result = asyncio.run(backend.generate(Request([], options={"max_tokens": 2}), lambda _: False))
    assert (result.finish, result.text) == ("length", "a b")


def test_malformed_responses_are_refused() -> None:
    for responses in (3, [{"key": "a"}], [{"text": True}], ["text"]):
        with pytest.raises(CassetteError):
            ScriptedBackend.from_responses(responses)


def test_bounded_schemas_let_a_constrained_generation_end() -> None:
    schema = {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string"}, "code": {"type": "string", "pattern": "^F[0-9]+$"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}},
        "kind": {"type": "string", "enum": ["a", "b"]}, "note": {"type": "string", "minLength": 500}}}
    out = bounded(schema)
    assert out["additionalProperties"] is False and out["required"] == ["name"]
    assert out["properties"]["name"]["maxLength"] == STRING_ROOM
    assert "maxLength" not in out["properties"]["code"] and "maxLength" not in out["properties"]["kind"]
    assert out["properties"]["tags"] == {"type": "array", "items": {"type": "string", "maxLength": 8},
                                         "maxItems": ITEMS_ROOM}
    assert out["properties"]["note"]["maxLength"] == 500  # never below what the schema demands
    assert schema["properties"]["name"] == {"type": "string"}  # the schema itself is left as it was
    assert bounded({"type": "object", "additionalProperties": True})["additionalProperties"] is True
