"""The judge's scoring, cache and LLM client, against a real OpenAI-compatible server on 127.0.0.1."""
from __future__ import annotations

import json
import math
import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest

from vlmnb import judge as J

SECRET = "sk-test-never-leak-5f3a9c"


# --------------------------------------------------------------------------------------
# replies of the fake OpenAI-compatible chat server (the `serve` fixture in conftest.py)
# --------------------------------------------------------------------------------------

def completion(content: str) -> dict:
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "fake-judge",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def answer(original, modified, matches, reasoning="step by step", **extra) -> str:
    return json.dumps({"reasoning": reasoning, "original_objects": original,
                       "modified_objects": modified,
                       "matches": [{"original": o, "modified": m} for o, m in matches], **extra})


GOOD = answer(["man", "dog", "bench"], ["person", "dog", "kite"], [("man", "person"), ("dog", "dog")],
              tp=17, fp=0, fn=0, f1=1.0)  # the model's own arithmetic is wrong on purpose


@pytest.fixture
def env(monkeypatch, tmp_path):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "VLMNB_JUDGE_MODEL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("VLMNB_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def ok(content=GOOD):
    return (200, completion(content), None)


def make_judge(server, **kw):
    kw.setdefault("cache", None)
    kw.setdefault("backoff", 0.01)
    kw.setdefault("timeout", 10)
    return J.LLMJudge(model="fake-judge", base_url=server.url, **kw)


# --------------------------------------------------------------------------------------
# scoring conventions
# --------------------------------------------------------------------------------------

def test_score_counts_come_from_the_lists():
    r = J.score(["man", "Dog", "dog ", "bench"], ["person", "dog", "kite"],
                [("man", "person"), ("dog", "DOG"), ("bench", "kite"), ("bench", "sofa"), ("man", "kite")], "t")
    assert r.original_objects == ["man", "Dog", "bench"]  # de-duplicated, first spelling kept
    assert (r.tp, r.fp, r.fn) == (3, 0, 0)
    assert any("sofa" in w for w in r.warnings) and any("already matched" in w for w in r.warnings)


def test_score_edge_cases():
    both_empty = J.score([], [], [], "t")
    assert (both_empty.precision, both_empty.recall, both_empty.f1) == (1.0, 1.0, 1.0)
    lost_all = J.score(["dog"], [], [], "t")
    assert lost_all.f1 == 0.0 and lost_all.recall == 0.0
    invented = J.score([], ["dog"], [], "t")
    assert invented.f1 == 0.0 and invented.precision == 0.0
    half = J.score(["a", "b"], ["a", "c", "d"], [("a", "a")], "t")
    assert half.precision == pytest.approx(1 / 3) and half.recall == 0.5 and half.f1 == pytest.approx(0.4)
    failed = J.JudgeResult.failure("t", "boom")
    assert not failed.ok and math.isnan(failed.f1) and failed.tp is None


def test_score_multiset_mode_counts_repeats():
    r = J.score(["red circle", "red circle"], ["red circle"], [("red circle", "red circle")] * 2, "t", dedupe=False)
    assert (r.tp, r.fp, r.fn) == (1, 0, 1)


def test_result_round_trips_through_json():
    r = J.score(["a"], ["a"], [("a", "a")], "t", rationale="why")
    back = J.JudgeResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back == r


# --------------------------------------------------------------------------------------
# the answer parser
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    GOOD,
    "```json\n" + GOOD + "\n```",
    "Let me think. The man is a person.\n" + GOOD + "\nSo F1 is high. {not json}",
    "Here:\n```\n" + GOOD + "\n```\nDone.",
])
def test_parser_reads_bare_fenced_and_wrapped_json(text):
    parsed = J.parse_judge_answer(text)
    assert parsed["original_objects"] == ["man", "dog", "bench"]
    assert parsed["matches"] == [("man", "person"), ("dog", "dog")]
    assert parsed["warnings"] == []


@pytest.mark.parametrize("text", ["", "I cannot help with that.", '{"original_objects": ["a"', '{"foo": 1}',
                                  '{"original_objects": "a, b", "modified_objects": []}'])
def test_parser_rejects_malformed_answers(text):
    with pytest.raises(J.JudgeAnswerError):
        J.parse_judge_answer(text)


def test_parser_keeps_the_valid_part_of_partially_valid_lists():
    text = json.dumps({"original_objects": ["cat", None, 3, "sofa", ""], "modified_objects": ["cat", {"x": 1}],
                       "matches": [{"original": "cat", "modified": "cat"}, ["sofa"], "sofa -> cat", 7,
                                   ["sofa", "cat"]]})
    parsed = J.parse_judge_answer(text)
    assert parsed["original_objects"] == ["cat", "sofa"] and parsed["modified_objects"] == ["cat"]
    assert parsed["matches"] == [("cat", "cat"), ("sofa", "cat"), ("sofa", "cat")]
    assert len(parsed["warnings"]) == 4  # two list warnings, two unreadable matches
    r = J.score(parsed["original_objects"], parsed["modified_objects"], parsed["matches"], "llm")
    assert (r.tp, r.fp, r.fn) == (1, 0, 1)


# --------------------------------------------------------------------------------------
# the LLM judge against the fake server
# --------------------------------------------------------------------------------------

def test_request_has_model_temperature_schema_and_key_only_in_header(env, serve):
    server = serve(ok())
    r = make_judge(server, seed=7).compare("A man and a dog on a bench.", "A person and a dog fly a kite.")
    assert r.ok and r.judge == "llm"
    assert (r.tp, r.fp, r.fn) == (2, 1, 1)  # recomputed: the server claimed tp=17
    assert r.f1 == pytest.approx(2 / 3) and r.rationale == "step by step"
    (req,) = server.requests
    assert req["path"] == "/v1/chat/completions"
    body = req["json"]
    assert body["model"] == "fake-judge" and body["temperature"] == 0 and body["seed"] == 7
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == J.JUDGE_SCHEMA
    msgs = body["messages"]
    assert msgs[0]["role"] == "system" and len(msgs) == 1 + 2 * 3 + 1  # instructions, 3 examples, pair
    assert "A man and a dog on a bench." in msgs[-1]["content"]
    headers = {k.lower(): v for k, v in req["headers"].items()}
    assert headers["authorization"] == f"Bearer {SECRET}"
    assert SECRET not in req["raw"]
    assert [k for k, v in headers.items() if SECRET in v] == ["authorization"]


def test_wrapped_answer_is_parsed(env, serve):
    server = serve(ok("Sure! Here is my analysis.\n```json\n" + GOOD + "\n```\nHope this helps."))
    r = make_judge(server).compare("o", "m")
    assert r.ok and (r.tp, r.fp, r.fn) == (2, 1, 1)


def test_malformed_answer_is_a_failure_not_a_zero(env, serve):
    server = serve(ok("I'd rather not answer in JSON."))
    r = make_judge(server, max_parse_retries=1).compare("o", "m")
    assert not r.ok and math.isnan(r.f1) and r.tp is None
    assert "unparseable" in r.error
    assert len(server.requests) == 2  # one retry for an unreadable answer


def test_partially_valid_answer_is_scored_with_warnings(env, serve):
    content = json.dumps({"reasoning": "r", "original_objects": ["cat", None, "sofa"], "modified_objects": ["cat", 5],
                          "matches": [{"original": "cat", "modified": "cat"}, {"original": "lamp", "modified": "cat"}]})
    r = make_judge(serve(ok(content))).compare("o", "m")
    assert r.ok and (r.tp, r.fp, r.fn) == (1, 0, 1)
    assert len(r.warnings) == 3


def test_rate_limit_then_success(env, serve):
    server = serve((429, {"error": {"message": "slow down", "type": "rate_limit"}}, {"Retry-After": "0"}),
                   (500, {"error": {"message": "oops"}}, None), ok())
    r = make_judge(server, max_retries=3).compare("o", "m")
    assert r.ok and r.tp == 2
    assert len(server.requests) == 3


def test_retry_exhaustion_is_reported_as_failure(env, serve):
    server = serve((503, {"error": {"message": f"overloaded (key {SECRET})"}}, None))
    r = make_judge(server, max_retries=2).compare("o", "m")
    assert not r.ok and math.isnan(r.f1) and math.isnan(r.precision)
    assert "503" in r.error and "3 attempts" in r.error
    assert SECRET not in r.error
    assert len(server.requests) == 3


def test_body_that_is_not_a_completion_is_a_failure(env, serve):
    server = serve((200, "<html>gateway page</html>", None))
    r = make_judge(server).compare("o", "m")
    assert not r.ok and math.isnan(r.f1) and r.error


def test_unauthorised_is_not_retried(env, serve):
    server = serve((401, {"error": {"message": "bad key"}}, None))
    r = make_judge(server, max_retries=4).compare("o", "m")
    assert not r.ok and "401" in r.error and len(server.requests) == 1


def test_server_without_structured_output_falls_back_to_prompt_json(env, serve):
    server = serve((400, {"error": {"message": "response_format json_schema is not supported"}}, None), ok())
    r = make_judge(server).compare("o", "m")
    assert r.ok and len(server.requests) == 2
    assert "response_format" in server.requests[0]["json"] and "response_format" not in server.requests[1]["json"]


def test_cache_hit_makes_no_request_and_never_stores_the_key(env, serve):
    server = serve(ok())
    cache_path = env / "cache" / "judge.sqlite"
    judge = make_judge(server, cache=str(cache_path))
    first = judge.compare("A man and a dog.", "A person and a dog.")
    again = judge.compare("A man and a dog.", "A person and a dog.")
    fresh = make_judge(server, cache=str(cache_path)).compare("A man and a dog.", "A person and a dog.")
    assert len(server.requests) == 1
    assert again == first and fresh == first
    make_judge(server, cache=str(cache_path)).compare("A man and a dog.", "Something else.")
    assert len(server.requests) == 2  # a different pair is a miss
    other_model = J.LLMJudge(model="other", base_url=server.url, cache=str(cache_path), backoff=0.01)
    other_model.compare("A man and a dog.", "A person and a dog.")
    assert len(server.requests) == 3  # the model is part of the key
    for f in cache_path.parent.iterdir():
        assert SECRET.encode() not in f.read_bytes(), f
    assert SECRET not in repr(judge)


def test_failures_are_not_cached(env, serve):
    server = serve((503, {"error": {"message": "down"}}, None), ok())
    judge = make_judge(server, cache="default", max_retries=0)
    assert not judge.compare("o", "m").ok
    assert judge.compare("o", "m").ok
    assert len(server.requests) == 2
    assert Path(judge.cache.path).parent == env / "cache"  # VLMNB_CACHE_DIR is honoured


def test_compare_many_keeps_order_with_workers(env, serve):
    server = serve(ok())
    results = J.compare_many([(f"o{i}", f"m{i}") for i in range(6)], make_judge(server), progress=False, workers=3)
    assert len(results) == 6 and all(r.ok for r in results)
    sent = sorted(r["json"]["messages"][-1]["content"] for r in server.requests)
    assert sent == sorted(J.user_message(f"o{i}", f"m{i}") for i in range(6))


def test_missing_endpoint_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        J.LLMJudge(cache=None).compare("o", "m")


# --------------------------------------------------------------------------------------
# cache under concurrency, judge resolution, exact judge
# --------------------------------------------------------------------------------------

def _write_entries(path: str, start: int, n: int) -> None:
    cache = J.JudgeCache(path)
    for i in range(start, start + n):
        cache.put("t", "m", "v", f"o{i}", "x", J.score([f"o{i}"], [], [], "t"))


def test_cache_is_safe_with_concurrent_writer_processes(tmp_path):
    path = str(tmp_path / "c.sqlite")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_entries, args=(path, k * 40, 40)) for k in range(2)]
    for p in procs:
        p.start()
    threads = [threading.Thread(target=_write_entries, args=(path, 80 + k * 20, 20)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cache = J.JudgeCache(path)
    assert len(cache) == 120
    assert cache.get("t", "m", "v", "o99", "x").original_objects == ["o99"]
    assert cache.get("t", "m", "v2", "o99", "x") is None
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_default_judge_follows_the_environment(monkeypatch):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "VLMNB_JUDGE_MODEL"):
        monkeypatch.delenv(var, raising=False)
    assert isinstance(J.default_judge(), J.OfflineJudge)
    monkeypatch.setenv("VLMNB_JUDGE_MODEL", "my-local-model")
    monkeypatch.setenv("VLMNB_CACHE_DIR", "/tmp/vlmnb-test-cache-unused")
    judge = J.default_judge()
    assert isinstance(judge, J.LLMJudge) and judge.model == "my-local-model"


def test_get_judge_by_name_and_errors():
    assert isinstance(J.get_judge("exact"), J.ExactJudge)
    assert isinstance(J.get_judge("Offline"), J.OfflineJudge)
    with pytest.raises(ValueError, match="unknown judge"):
        J.get_judge("gpt")
    with pytest.raises(TypeError):
        J.get_judge(42)


def test_exact_judge_uses_the_toy_vocabulary():
    from vlmnb.toy.scenes import describe, parse_description

    original = "a large red circle at the top left and a small blue square at the center"
    modified = "a small red circle at the right and a large green triangle at the bottom"
    assert [o.name for o in parse_description(original)] == ["red circle", "blue square"]
    r = J.compare(original, modified, judge="exact")
    assert r.ok and r.judge == "exact"
    assert r.matched == [("red circle", "red circle")]
    assert (r.tp, r.fp, r.fn) == (1, 1, 1) and r.f1 == pytest.approx(0.5)
    same = J.compare(describe(parse_description(original)), original, judge="exact")
    assert same.f1 == 1.0
