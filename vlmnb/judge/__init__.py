"""Object-level comparison of two image descriptions: how much of the original survives.

Given an *original* description and a *modified* one (for example the same model's answer
under an attention knockout), a judge lists the physical objects mentioned in each, matches
the two lists one to one, and counts

* ``tp`` — objects in both descriptions (matched pairs),
* ``fn`` — objects only in the original (lost),
* ``fp`` — objects only in the modified description (made up),

from which precision, recall and F1 follow. Four judges share one interface
(``judge.compare(original, modified) -> JudgeResult``):

* :class:`LLMJudge` — an LLM on any OpenAI-compatible endpoint, the protocol of Kaduri et al.
  (Sec. 4.2, App. B) in this project's own prompt, with a persistent :class:`JudgeCache`;
* :class:`OfflineJudge` — no endpoint, no network: nouns, lemmas, WordNet, then sentence
  embeddings (see :mod:`vlmnb.judge.offline`);
* :class:`ExactJudge` — the toy scenes' closed vocabulary (delegates to ``vlmnb.toy.metrics``);
* any object with ``name``, ``model``, ``version`` and ``compare``.

Counts are always recomputed here from the object lists and the matched pairs; a judge's own
arithmetic is never used. A judge *failure* (endpoint down, unparseable answer) is a result
with ``ok=False`` and NaN scores, never an F1 of 0.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import sqlite3
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

__all__ = [
    "JudgeResult", "score", "compare", "compare_many", "default_judge", "get_judge",
    "ExactJudge", "LLMJudge", "OfflineJudge", "JudgeCache", "default_cache_path",
    "parse_judge_answer", "load_labelled", "agreement_table", "object_agreement",
    "PROMPT_VERSION", "JUDGE_SCHEMA", "build_messages", "toy_edit_pairs", "toy_agreement",
    "markdown_table",
]


# --------------------------------------------------------------------------------------
# result and scoring
# --------------------------------------------------------------------------------------

@dataclass
class JudgeResult:
    """The comparison of one (original, modified) pair of descriptions.

    ``matched`` holds ``(original_object, modified_object)`` pairs, one to one.
    ``tp = len(matched)``, ``fn = len(original_objects) - tp``, ``fp = len(modified_objects) - tp``.

    Conventions for the edge cases (so that averages over many pairs stay meaningful):

    * both lists empty: precision = recall = F1 = 1.0 (nothing was there, nothing was lost
      or invented);
    * precision with no modified objects, or recall with no original objects, is 1.0 (vacuous);
      F1 is 0.0 whenever ``tp == 0`` and at least one list is non-empty;
    * a judge failure (``ok=False``): counts are ``None`` and precision/recall/F1 are NaN,
      ``error`` says why. Drop or report failures; never average them as zeros.
    """

    original_objects: list[str]
    modified_objects: list[str]
    matched: list[tuple[str, str]]
    tp: int | None
    fp: int | None
    fn: int | None
    precision: float
    recall: float
    f1: float
    judge: str
    rationale: str | None = None
    ok: bool = True
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (matched pairs become 2-element lists)."""
        d = asdict(self)
        d["matched"] = [list(p) for p in self.matched]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "JudgeResult":
        d = dict(d)
        d["matched"] = [tuple(p) for p in d.get("matched", [])]
        d.setdefault("warnings", [])
        return cls(**d)

    @classmethod
    def failure(cls, judge: str, error: str, rationale: str | None = None) -> "JudgeResult":
        """A failed comparison: no counts, NaN scores."""
        nan = float("nan")
        return cls([], [], [], None, None, None, nan, nan, nan, judge,
                   rationale=rationale, ok=False, error=error)


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    if tp == 0:
        f1 = 1.0 if fp == 0 and fn == 0 else 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall)
    return precision, recall, f1


def _norm(name: str) -> str:
    return " ".join(str(name).lower().split())


def score(original_objects: Iterable[str], modified_objects: Iterable[str],
          matched: Iterable[Sequence[str]], judge: str, rationale: str | None = None,
          warnings: list[str] | None = None, dedupe: bool = True) -> JudgeResult:
    """Build a :class:`JudgeResult` from two object lists and proposed matches.

    With ``dedupe`` (the default, open-vocabulary judges) each list is de-duplicated case- and
    space-insensitively, first spelling kept; without it the lists are multisets (the toy's
    "two red circles" are two objects). A proposed match is kept only if both names are still
    available in their lists; dropped matches are reported in ``warnings``. The counts come
    from what is kept, never from the judge.
    """
    warnings = list(warnings or [])

    def clean(items: Iterable[str], which: str) -> list[str]:
        out, seen = [], set()
        for item in items:
            if not isinstance(item, str) or not item.strip():
                warnings.append(f"dropped non-string or empty {which} object {item!r}")
                continue
            key = _norm(item)
            if key not in seen or not dedupe:
                seen.add(key)
                out.append(item.strip())
        return out

    orig = clean(original_objects, "original")
    mod = clean(modified_objects, "modified")
    free_o = Counter(_norm(o) for o in orig)
    free_m = Counter(_norm(m) for m in mod)
    spelling_o = {_norm(o): o for o in reversed(orig)}
    spelling_m = {_norm(m): m for m in reversed(mod)}
    pairs = []
    for pair in matched:
        try:
            o, m = pair
            ko, km = _norm(o), _norm(m)
        except (TypeError, ValueError, AttributeError):
            warnings.append(f"dropped malformed match {pair!r}")
            continue
        if ko not in spelling_o or km not in spelling_m:
            warnings.append(f"dropped match {o!r}->{m!r}: not in the object lists")
            continue
        if free_o[ko] == 0 or free_m[km] == 0:
            warnings.append(f"dropped match {o!r}->{m!r}: object already matched")
            continue
        free_o[ko] -= 1
        free_m[km] -= 1
        pairs.append((spelling_o[ko], spelling_m[km]))
    tp = len(pairs)
    fp, fn = len(mod) - tp, len(orig) - tp
    p, r, f = _prf(tp, fp, fn)
    return JudgeResult(orig, mod, pairs, tp, fp, fn, p, r, f, judge,
                       rationale=rationale, warnings=warnings)


# --------------------------------------------------------------------------------------
# judges: protocol, resolution, compare
# --------------------------------------------------------------------------------------

class Judge(Protocol):
    name: str
    model: str
    version: str

    def compare(self, original: str, modified: str) -> JudgeResult: ...


def _llm_configured() -> bool:
    return any(os.environ.get(k) for k in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "VLMNB_JUDGE_MODEL"))


def default_judge() -> "Judge":
    """An :class:`LLMJudge` when an endpoint is configured (``OPENAI_API_KEY``,
    ``OPENAI_BASE_URL`` or ``VLMNB_JUDGE_MODEL`` set), else an :class:`OfflineJudge`."""
    if _llm_configured():
        return LLMJudge(model=os.environ.get("VLMNB_JUDGE_MODEL") or "gpt-4o")
    return OfflineJudge()


def get_judge(judge: Any = None) -> "Judge":
    """Resolve ``None`` (default judge), a name (``"exact"``, ``"offline"``, ``"llm"``) or a judge object."""
    if judge is None:
        return default_judge()
    if isinstance(judge, str):
        key = judge.lower()
        if key == "exact":
            return ExactJudge()
        if key == "offline":
            return OfflineJudge()  # cheap: WordNet and the sentence model are loaded once per process
        if key == "llm":
            return LLMJudge(model=os.environ.get("VLMNB_JUDGE_MODEL") or "gpt-4o")
        raise ValueError(f"unknown judge {judge!r}: use 'exact', 'offline', 'llm' or a judge object")
    if not callable(getattr(judge, "compare", None)):
        raise TypeError(f"{judge!r} is not a judge: it needs a compare(original, modified) method")
    return judge


def compare(original: str, modified: str, judge: Any = None) -> JudgeResult:
    """Compare two descriptions object by object; see :class:`JudgeResult` for the scores.

    ``judge`` is a judge object, a name (``"exact"``, ``"offline"``, ``"llm"``) or ``None``
    for :func:`default_judge`.
    """
    return get_judge(judge).compare(original, modified)


def compare_many(pairs: Iterable[tuple[str, str]], judge: Any = None, progress: bool = True,
                 workers: int = 1) -> list[JudgeResult]:
    """:func:`compare` over many ``(original, modified)`` pairs, in order, with a progress bar.

    ``workers > 1`` runs that many comparisons at once in threads (useful for LLM endpoints;
    the cache is safe with concurrent writers).
    """
    from tqdm.auto import tqdm

    j = get_judge(judge)
    pairs = list(pairs)
    bar = tqdm(total=len(pairs), desc=f"judge ({j.name})", disable=not progress)
    try:
        if workers <= 1:
            out = []
            for o, m in pairs:
                out.append(j.compare(o, m))
                bar.update(1)
            return out
        from concurrent.futures import ThreadPoolExecutor

        def one(pair):
            r = j.compare(*pair)
            bar.update(1)
            return r

        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, pairs))
    finally:
        bar.close()


# --------------------------------------------------------------------------------------
# exact judge (toy scenes)
# --------------------------------------------------------------------------------------

class ExactJudge:
    """Exact matching for the toy "shapes" scenes, whose object vocabulary is closed.

    Delegates extraction and matching to ``vlmnb.toy.metrics.match_objects`` (objects are
    colour + shape names, counted as multisets: two red circles are two objects) and recomputes
    the scores with :func:`score`. F1 equals the toy module's in every case; precision/recall
    follow this module's conventions when one side is empty.
    """

    name = "exact"
    model = "toy-vocabulary"
    version = "1"

    def compare(self, original: str, modified: str) -> JudgeResult:
        from vlmnb.toy.metrics import match_objects

        m = match_objects(original, modified)
        result = score(m.original_objects, m.modified_objects, m.matched, self.name, dedupe=False)
        if (result.tp, result.fp, result.fn) != (m.tp, m.fp, m.fn):
            raise RuntimeError(
                f"toy matcher counts {(m.tp, m.fp, m.fn)} disagree with its own lists "
                f"{(result.tp, result.fp, result.fn)}: fix vlmnb.toy.metrics.match_objects")
        return result

    def __repr__(self) -> str:
        return "ExactJudge()"


# --------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------

def _work_tree_root(start: Path | None = None) -> Path:
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / ".git").exists() or (d / "pyproject.toml").exists():
            return d
    return here


def default_cache_path() -> Path:
    """``$VLMNB_CACHE_DIR/judge.sqlite`` if set, else ``<work tree>/.cache/vlmnb/judge.sqlite``
    (the work tree is the nearest folder above the current one with ``.git`` or ``pyproject.toml``)."""
    env = os.environ.get("VLMNB_CACHE_DIR")
    base = Path(env) if env else _work_tree_root() / ".cache" / "vlmnb"
    return base / "judge.sqlite"


class JudgeCache:
    """A persistent sqlite cache of judge results.

    Keyed by a SHA-256 of (judge name, model, prompt version, original, modified). Only
    successful results are stored, so a failed call is retried on the next run. Writes are
    single ``INSERT OR REPLACE`` statements in WAL mode with a busy timeout: several processes
    or threads may write at once, and an interrupted run leaves every finished entry intact.
    Nothing secret is stored: only the texts, the model name and the parsed result.
    """

    def __init__(self, path: str | os.PathLike | None = None, timeout: float = 60.0):
        self.path = Path(path) if path is not None else default_cache_path()
        self.timeout = timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Switching to WAL needs an exclusive lock, and sqlite answers "database is locked" at once
        # (without its busy handler) while another connection is opening the same new file: retry.
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._create()
                break
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _create(self) -> None:
        con = self._connect()
        try:
            if con.execute("PRAGMA journal_mode").fetchone()[0] != "wal":  # WAL persists in the file
                con.execute("PRAGMA journal_mode=WAL")
            con.execute(
                "CREATE TABLE IF NOT EXISTS judge_results ("
                " key TEXT PRIMARY KEY, judge TEXT, model TEXT, version TEXT,"
                " original TEXT, modified TEXT, result TEXT, created REAL)")
        finally:
            con.close()

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        con.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
        return con

    @staticmethod
    def key(judge: str, model: str, version: str, original: str, modified: str) -> str:
        blob = json.dumps([judge, model, version, original, modified], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def get(self, judge: str, model: str, version: str, original: str, modified: str) -> JudgeResult | None:
        k = self.key(judge, model, version, original, modified)
        con = self._connect()
        try:
            row = con.execute("SELECT result FROM judge_results WHERE key=?", (k,)).fetchone()
        finally:
            con.close()
        return JudgeResult.from_dict(json.loads(row[0])) if row else None

    def put(self, judge: str, model: str, version: str, original: str, modified: str,
            result: JudgeResult) -> None:
        if not result.ok:
            return
        k = self.key(judge, model, version, original, modified)
        con = self._connect()
        try:
            con.execute(
                "INSERT OR REPLACE INTO judge_results VALUES (?,?,?,?,?,?,?,?)",
                (k, judge, model, version, original, modified,
                 json.dumps(result.to_dict(), ensure_ascii=False), time.time()))
        finally:
            con.close()

    def __len__(self) -> int:
        con = self._connect()
        try:
            return con.execute("SELECT COUNT(*) FROM judge_results").fetchone()[0]
        finally:
            con.close()

    def __repr__(self) -> str:
        return f"JudgeCache({str(self.path)!r})"


# --------------------------------------------------------------------------------------
# LLM judge: prompt, schema, parser
# --------------------------------------------------------------------------------------

def _data_text(name: str) -> str:
    return resources.files("vlmnb.judge").joinpath("prompts", name).read_text(encoding="utf-8")


JUDGE_INSTRUCTIONS = _data_text("llm_prompt.md")
JUDGE_EXAMPLES = json.loads(_data_text("llm_examples.json"))
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


def _user_message(original: str, modified: str) -> str:
    return f"ORIGINAL description:\n{original.strip()}\n\nMODIFIED description:\n{modified.strip()}"


def build_messages(original: str, modified: str) -> list[dict[str, str]]:
    """The chat messages sent to the LLM: instructions, three worked examples, the pair."""
    messages = [{"role": "system", "content": JUDGE_INSTRUCTIONS}]
    for ex in JUDGE_EXAMPLES:
        messages.append({"role": "user", "content": _user_message(ex["original"], ex["modified"])})
        messages.append({"role": "assistant", "content": json.dumps(ex["answer"], ensure_ascii=False)})
    messages.append({"role": "user", "content": _user_message(original, modified)})
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


# --------------------------------------------------------------------------------------
# labelled set and agreement
# --------------------------------------------------------------------------------------

def load_labelled(path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The project's hand-labelled description pairs (``vlmnb/judge/prompts/labelled_pairs.json``)."""
    if path is None:
        return json.loads(_data_text("labelled_pairs.json"))
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _gold_f1(item: dict[str, Any]) -> float:
    return _prf(item["tp"], item["fp"], item["fn"])[2]


def agreement_table(judge: Any, labelled: list[dict[str, Any]] | None = None, per_pair: bool = False,
                    progress: bool = False):
    """How a judge's scores agree with the labelled set, as a pandas DataFrame.

    With ``per_pair=True``: one row per pair (gold and judged tp/fp/fn/F1, ``abs_f1_error``).
    Otherwise one row per category plus an ``all`` row: number of pairs, mean gold F1, mean
    judged F1, mean absolute F1 error, the share of pairs with exactly the gold counts, and
    the number of judge failures (failures are left out of the means).
    """
    import pandas as pd

    labelled = load_labelled() if labelled is None else labelled
    j = get_judge(judge)
    results = compare_many([(x["original"], x["modified"]) for x in labelled], j, progress=progress)
    rows = []
    for item, r in zip(labelled, results):
        rows.append({
            "id": item.get("id"), "category": item.get("category", ""),
            "gold_tp": item["tp"], "gold_fp": item["fp"], "gold_fn": item["fn"], "gold_f1": _gold_f1(item),
            "tp": r.tp, "fp": r.fp, "fn": r.fn, "f1": r.f1, "ok": r.ok,
            "abs_f1_error": abs(r.f1 - _gold_f1(item)) if r.ok else float("nan"),
            "counts_exact": r.ok and (r.tp, r.fp, r.fn) == (item["tp"], item["fp"], item["fn"]),
        })
    df = pd.DataFrame(rows)
    if per_pair:
        return df

    def summary(g):
        ok = g[g["ok"]]
        return pd.Series({
            "pairs": len(g), "gold_f1": g["gold_f1"].mean(), "judge_f1": ok["f1"].mean(),
            "mean_abs_f1_error": ok["abs_f1_error"].mean(),
            "counts_exact": ok["counts_exact"].mean(), "failures": int((~g["ok"]).sum()),
        })

    by_cat = [summary(g).rename(cat) for cat, g in df.groupby("category", sort=True)]
    table = pd.DataFrame(by_cat + [summary(df).rename("all")])
    table.index.name = "category"
    table["pairs"] = table["pairs"].astype(int)
    table["failures"] = table["failures"].astype(int)
    return table


def object_agreement(judge: Any, labelled: list[dict[str, Any]] | None = None):
    """Object-level agreement with the gold labels, in the form of the paper's user study.

    For every gold object of every pair the question is "is this object present in the
    *other* description?" (an original object: kept in the modified one; a modified object:
    present in the original). Gold answers come from the gold matches; the judge answers
    "yes" when it matched an object of the same name (compared by lemma). Returns a one-row
    DataFrame with the four cells (``gold_yes_judge_yes`` ...), TPR, TNR and accuracy.
    """
    import pandas as pd

    labelled = load_labelled() if labelled is None else labelled
    j = get_judge(judge)
    cells = {"yes/yes": 0, "yes/no": 0, "no/yes": 0, "no/no": 0}
    for item in labelled:
        r = j.compare(item["original"], item["modified"])
        if not r.ok:
            continue
        judged_o = {lemma_key(o) for o, _ in r.matched}
        judged_m = {lemma_key(m) for _, m in r.matched}
        gold_o = {lemma_key(o) for o, _ in item["matched"]}
        gold_m = {lemma_key(m) for _, m in item["matched"]}
        for objs, gold, judged in ((item["original_objects"], gold_o, judged_o),
                                   (item["modified_objects"], gold_m, judged_m)):
            for obj in objs:
                g = "yes" if lemma_key(obj) in gold else "no"
                p = "yes" if lemma_key(obj) in judged else "no"
                cells[f"{g}/{p}"] += 1
    yy, yn, ny, nn = cells["yes/yes"], cells["yes/no"], cells["no/yes"], cells["no/no"]
    total = yy + yn + ny + nn
    return pd.DataFrame([{
        "gold_yes_judge_yes": yy, "gold_yes_judge_no": yn, "gold_no_judge_yes": ny, "gold_no_judge_no": nn,
        "TPR": yy / (yy + yn) if yy + yn else math.nan,
        "TNR": nn / (nn + ny) if nn + ny else math.nan,
        "accuracy": (yy + nn) / total if total else math.nan,
    }])


TOY_EDITS = ("unchanged", "size/position moved", "object dropped", "object added", "colour changed", "shape changed")


def toy_edit_pairs(n_scenes: int = 40, seed: int = 0) -> list[dict[str, Any]]:
    """(original, modified) toy descriptions with known edits, for comparing judges on the toy.

    For each of ``n_scenes`` test scenes, one modified description per edit in
    :data:`TOY_EDITS`: unchanged; every object's size and cell changed (attributes only);
    one object dropped; one object added; one object's colour changed; one object's shape
    changed. Deterministic in ``seed``.
    """
    import dataclasses

    import numpy as np

    from vlmnb.toy import scenes as S

    rng = np.random.default_rng(seed)
    pairs = []
    for scene in S.make_scenes(n_scenes, split="test", seed=seed):
        objs = list(scene.objects)
        k = int(rng.integers(len(objs)))
        free_cells = [c for c in S.CELLS if c not in {o.cell for o in objs}]
        other = lambda values, current: [v for v in values if v != current][int(rng.integers(len(values) - 1))]  # noqa: E731
        edits = {
            "unchanged": objs,
            "size/position moved": [dataclasses.replace(o, size=other(S.SIZES, o.size),
                                                        cell=S.CELLS[(S.CELLS.index(o.cell) + 1) % len(S.CELLS)])
                                    for o in objs],
            "object dropped": objs[:k] + objs[k + 1:],
            "object added": objs + [S.ToyObject(shape=S.SHAPES[int(rng.integers(len(S.SHAPES)))],
                                                color=list(S.COLORS)[int(rng.integers(len(S.COLORS)))],
                                                size="small", cell=free_cells[0] if free_cells else "center")],
            "colour changed": objs[:k] + [dataclasses.replace(objs[k], color=other(list(S.COLORS), objs[k].color))] + objs[k + 1:],
            "shape changed": objs[:k] + [dataclasses.replace(objs[k], shape=other(S.SHAPES, objs[k].shape))] + objs[k + 1:],
        }
        for edit in TOY_EDITS:
            modified = S.describe(edits[edit]) if edits[edit] else "there is nothing in the image."
            pairs.append({"scene": scene.index, "edit": edit, "original": scene.description, "modified": modified})
    return pairs


def toy_agreement(judge: Any = "offline", n_scenes: int = 40, seed: int = 0, per_pair: bool = False,
                  progress: bool = False):
    """A judge against the exact toy judge on :func:`toy_edit_pairs`, as a DataFrame.

    Per edit: mean F1 of the exact judge, mean F1 of ``judge``, their mean absolute
    difference and the share of pairs with identical F1. An open-vocabulary judge that
    ignores attributes (as the paper's protocol asks) cannot see a colour change, which on
    the toy changes the object's identity: that row shows by how much.
    """
    import pandas as pd

    pairs = toy_edit_pairs(n_scenes, seed)
    pp = [(p["original"], p["modified"]) for p in pairs]
    exact = compare_many(pp, ExactJudge(), progress=False)
    other = compare_many(pp, judge, progress=progress)
    df = pd.DataFrame([{**p, "exact_f1": e.f1, "judge_f1": o.f1, "ok": o.ok} for p, e, o in zip(pairs, exact, other)])
    df["abs_diff"] = (df["exact_f1"] - df["judge_f1"]).abs()
    if per_pair:
        return df
    table = df.groupby("edit", sort=False).agg(pairs=("edit", "size"), exact_f1=("exact_f1", "mean"),
                                                judge_f1=("judge_f1", "mean"), mean_abs_diff=("abs_diff", "mean"),
                                                same_f1=("abs_diff", lambda x: float((x < 1e-9).mean())))
    overall = pd.DataFrame([{"pairs": len(df), "exact_f1": df["exact_f1"].mean(), "judge_f1": df["judge_f1"].mean(),
                             "mean_abs_diff": df["abs_diff"].mean(),
                             "same_f1": float((df["abs_diff"] < 1e-9).mean())}], index=["all"])
    out = pd.concat([table, overall])
    out.index.name = "edit"
    return out


def markdown_table(df, digits: int = 3) -> str:
    """A DataFrame as a Markdown pipe table (floats to ``digits`` decimals), for the book."""
    import numbers

    def cell(v):
        if isinstance(v, bool):
            return str(v)
        if isinstance(v, numbers.Integral):
            return str(int(v))
        if isinstance(v, numbers.Real):
            return "NaN" if math.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    show_index = df.index.name is not None
    header = ([df.index.name] if show_index else []) + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for idx, row in zip(df.index, df.itertuples(index=False)):  # itertuples keeps int columns int
        values = ([str(idx)] if show_index else []) + [cell(v) for v in row]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines)


# The offline judge lives in its own module (it loads WordNet and a sentence model, lazily);
# it is imported here, after everything it uses from this module is defined.
from vlmnb.judge.offline import OfflineJudge, lemma_key  # noqa: E402
