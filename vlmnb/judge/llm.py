"""The LLM judge: the protocol of Kaduri et al. (Sec. 4.2, App. B) on any OpenAI-compatible
chat endpoint, in this project's own prompt (``prompts/llm_prompt.md`` and three worked
examples), with JSON-schema output, a tolerant parser and a persistent :class:`JudgeCache`.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from typing import Any

from vlmnb.judge.cache import JudgeCache
from vlmnb.judge.files import packaged_text
from vlmnb.judge.result import JudgeResult, score

__all__ = ["LLMJudge", "JudgeAnswerError", "parse_judge_answer", "build_messages", "user_message",
           "JUDGE_INSTRUCTIONS", "JUDGE_EXAMPLES", "JUDGE_SCHEMA", "PROMPT_VERSION"]


# --------------------------------------------------------------------------------------
# prompt, schema, parser
# --------------------------------------------------------------------------------------

JUDGE_INSTRUCTIONS = packaged_text("llm_prompt.md")
JUDGE_EXAMPLES = json.loads(packaged_text("llm_examples.json"))
# The version changes whenever the prompt or the examples change, so the cache never mixes them.
PROMPT_VERSION = "v1-" + hashlib.sha256(
    (JUDGE_INSTRUCTIONS + json.dumps(JUDGE_EXAMPLES, sort_keys=True)).encode()).hexdigest()[:10]

JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "reasoning": {"type": "string"},
        "original_objects": {"type": "array", "items": {"type": "string"}},
        "modified_objects": {"type": "array", "items": {"type": "string"}},
        "matches": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"original": {"type": "string"}, "modified": {"type": "string"}},
                "required": ["original", "modified"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["reasoning", "original_objects", "modified_objects", "matches"],
    "additionalProperties": False,
}


def user_message(original: str, modified: str) -> str:
    """The user turn that presents one pair to the LLM (also used for the worked examples)."""
    return f"ORIGINAL description:\n{original.strip()}\n\nMODIFIED description:\n{modified.strip()}"


def build_messages(original: str, modified: str) -> list[dict[str, str]]:
    """The chat messages sent to the LLM: instructions, three worked examples, the pair."""
    messages = [{"role": "system", "content": JUDGE_INSTRUCTIONS}]
    for ex in JUDGE_EXAMPLES:
        messages.append({"role": "user", "content": user_message(ex["original"], ex["modified"])})
        messages.append({"role": "assistant", "content": json.dumps(ex["answer"], ensure_ascii=False)})
    messages.append({"role": "user", "content": user_message(original, modified)})
    return messages


class JudgeAnswerError(ValueError):
    """The LLM's answer could not be read as the expected JSON object."""


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


def _json_objects(text: str):
    """Every JSON object that can be decoded from ``text``: fenced blocks first, then from
    each ``{`` onwards (tolerating prose before and after)."""
    decoder = json.JSONDecoder()
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for chunk in candidates:
        for i, ch in enumerate(chunk):
            if ch == "{":
                try:
                    obj, _ = decoder.raw_decode(chunk, i)
                except json.JSONDecodeError:
                    continue
                if isinstance(obj, dict):
                    yield obj


_PAIR_KEYS = (("original", "modified"), ("orig", "mod"), ("original_object", "modified_object"))


def _read_pair(item: Any) -> tuple[str, str] | None:
    if isinstance(item, dict):
        for a, b in _PAIR_KEYS:
            if isinstance(item.get(a), str) and isinstance(item.get(b), str):
                return item[a], item[b]
        return None
    if isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(x, str) for x in item):
        return item[0], item[1]
    if isinstance(item, str):
        parts = re.split(r"\s*(?:->|→|=>|<->|:)\s*", item, maxsplit=1)
        if len(parts) == 2 and all(parts):
            return parts[0], parts[1]
    return None


def parse_judge_answer(text: str) -> dict[str, Any]:
    """Read the LLM's answer into ``original_objects``, ``modified_objects``, ``matches``
    (list of pairs), ``reasoning`` and ``warnings``.

    Accepts a bare JSON object, one inside code fences, or one surrounded by prose. Entries
    that are not strings (or pairs that cannot be read) are dropped with a warning; a missing
    object list raises :class:`JudgeAnswerError`.
    """
    if not isinstance(text, str) or not text.strip():
        raise JudgeAnswerError("empty answer")
    for obj in _json_objects(text):
        if "original_objects" not in obj or "modified_objects" not in obj:
            continue
        warnings: list[str] = []
        lists = {}
        for key in ("original_objects", "modified_objects"):
            value = obj[key]
            if not isinstance(value, list):
                raise JudgeAnswerError(f"{key} is not a list: {value!r:.80}")
            lists[key] = [v for v in value if isinstance(v, str) and v.strip()]
            if len(lists[key]) != len(value):
                warnings.append(f"dropped {len(value) - len(lists[key])} invalid entries of {key}")
        raw_matches = obj.get("matches", obj.get("matched", []))
        if not isinstance(raw_matches, list):
            warnings.append("matches is not a list: treated as empty")
            raw_matches = []
        matches = []
        for item in raw_matches:
            pair = _read_pair(item)
            if pair is None:
                warnings.append(f"dropped unreadable match {item!r:.80}")
            else:
                matches.append(pair)
        reasoning = obj.get("reasoning")
        return {"original_objects": lists["original_objects"], "modified_objects": lists["modified_objects"],
                "matches": matches, "reasoning": reasoning if isinstance(reasoning, str) else None,
                "warnings": warnings}
    raise JudgeAnswerError(f"no JSON object with original_objects and modified_objects in answer: {text[:120]!r}")


# --------------------------------------------------------------------------------------
# LLM judge
# --------------------------------------------------------------------------------------

_RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class LLMJudge:
    """The LLM-as-a-judge protocol (Kaduri et al., Sec. 4.2 and App. B) on any
    OpenAI-compatible chat endpoint, in this project's own prompt.

    Parameters
    ----------
    model: chat model name, e.g. ``"gpt-4o"`` or the name a local server gives its model.
    base_url: endpoint, e.g. ``"http://127.0.0.1:8000/v1"``; default ``$OPENAI_BASE_URL``
        or OpenAI itself.
    cache: a :class:`JudgeCache`, a path to one, ``"default"`` (:func:`default_cache_path`)
        or ``None`` for no cache.
    max_retries: retries after the first attempt on rate limits (429), timeouts, connection
        errors and 5xx, with exponential backoff (``backoff * 2**attempt`` seconds, jittered,
        capped at ``max_backoff``; a server's ``Retry-After`` is honoured up to that cap).
    timeout: seconds per request.
    seed: sent with every request (with temperature 0) for repeatable answers.
    structured: ask for JSON-schema structured output; if the server rejects the
        ``response_format`` it is dropped and the prompt's JSON instructions are relied on.

    The API key is read from ``$OPENAI_API_KEY`` at each call and is never kept on the
    object, shown in its repr, written into results, logs or the cache. A local server that
    needs no key works with ``base_url`` set and no key.
    """

    name = "llm"

    def __init__(self, model: str = "gpt-4o", base_url: str | None = None, cache: Any = "default",
                 max_retries: int = 5, timeout: float = 120.0, seed: int = 0,
                 backoff: float = 1.0, max_backoff: float = 60.0, structured: bool = True,
                 max_parse_retries: int = 1):
        self.model = model
        self.base_url = base_url
        if cache == "default":
            cache = JudgeCache()
        elif cache is not None and not isinstance(cache, JudgeCache):
            cache = JudgeCache(cache)
        self.cache = cache
        self.max_retries = int(max_retries)
        self.timeout = float(timeout)
        self.seed = seed
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.structured = structured
        self.max_parse_retries = int(max_parse_retries)
        self.version = PROMPT_VERSION

    def __repr__(self) -> str:
        return (f"LLMJudge(model={self.model!r}, base_url={self._base_url()!r}, "
                f"prompt={self.version!r}, cache={self.cache!r})")

    def _base_url(self) -> str | None:
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or None

    def _client(self):
        from openai import OpenAI

        key = os.environ.get("OPENAI_API_KEY")
        base_url = self._base_url()
        if not key:
            if base_url is None:
                raise ValueError("LLMJudge needs an endpoint: set OPENAI_API_KEY (and optionally "
                                 "OPENAI_BASE_URL), or pass base_url for a local server")
            key = "no-key"  # local servers accept any key; the header must still be present
        # retries are ours (bounded, reported); the client's own are switched off
        return OpenAI(api_key=key, base_url=base_url, timeout=self.timeout, max_retries=0)

    @staticmethod
    def _scrub(message: str) -> str:
        key = os.environ.get("OPENAI_API_KEY")
        if key:
            message = message.replace(key, "***")
        return message

    def _request(self, client, messages, structured: bool):
        kwargs = dict(model=self.model, messages=messages, temperature=0, seed=self.seed)
        if structured:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "object_comparison", "strict": True, "schema": JUDGE_SCHEMA},
            }
        response = client.chat.completions.create(**kwargs)
        if not response.choices:
            raise JudgeAnswerError("the response has no choices")
        return response.choices[0].message.content or ""

    def _wait(self, attempt: int, exc: Exception | None) -> None:
        delay = min(self.max_backoff, self.backoff * 2 ** attempt) * (0.5 + random.random() / 2)
        retry_after = getattr(getattr(exc, "response", None), "headers", {}).get("retry-after")
        try:
            if retry_after is not None:
                delay = max(delay, min(self.max_backoff, float(retry_after)))
        except ValueError:
            pass
        time.sleep(delay)

    def compare(self, original: str, modified: str) -> JudgeResult:
        """Judge one pair (from the cache when it is there)."""
        if self.cache is not None:
            hit = self.cache.get(self.name, self.model, self.version, original, modified)
            if hit is not None:
                return hit
        result = self._judge(original, modified)
        if self.cache is not None and result.ok:
            self.cache.put(self.name, self.model, self.version, original, modified, result)
        return result

    def _judge(self, original: str, modified: str) -> JudgeResult:
        import openai

        messages = build_messages(original, modified)
        structured = self.structured
        attempt = parse_failures = 0
        last_error = "no attempt made"
        client = self._client()
        try:
            while True:
                try:
                    text = self._request(client, messages, structured)
                    parsed = parse_judge_answer(text)
                except openai.BadRequestError as exc:
                    msg = str(exc).lower()
                    if structured and ("response_format" in msg or "json_schema" in msg or "schema" in msg):
                        structured = False  # the server does not do structured output
                        continue
                    return JudgeResult.failure(self.name, self._scrub(f"bad request: {exc}"))
                except openai.APIStatusError as exc:
                    last_error = self._scrub(f"HTTP {exc.status_code}: {exc}")
                    if exc.status_code not in _RETRYABLE_STATUS:
                        return JudgeResult.failure(self.name, last_error)
                    if attempt >= self.max_retries:
                        break
                    self._wait(attempt, exc)
                    attempt += 1
                    continue
                except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                    last_error = self._scrub(f"{type(exc).__name__}: {exc}")
                    if attempt >= self.max_retries:
                        break
                    self._wait(attempt, None)
                    attempt += 1
                    continue
                except openai.APIError as exc:  # e.g. a 200 whose body is not a chat completion
                    return JudgeResult.failure(self.name, self._scrub(f"{type(exc).__name__}: {exc}"))
                except JudgeAnswerError as exc:
                    last_error = f"unparseable answer: {exc}"
                    if parse_failures >= self.max_parse_retries:
                        return JudgeResult.failure(self.name, last_error)
                    parse_failures += 1
                    continue
                except Exception as exc:  # noqa: BLE001 - a body the client cannot read: recorded, not raised
                    return JudgeResult.failure(self.name, self._scrub(f"unreadable response ({type(exc).__name__}): {exc}"))
                return score(parsed["original_objects"], parsed["modified_objects"], parsed["matches"],
                             self.name, rationale=parsed["reasoning"], warnings=parsed["warnings"])
        finally:
            client.close()
        return JudgeResult.failure(self.name, f"gave up after {attempt + 1} attempts; last error: {last_error}")
