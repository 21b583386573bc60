"""Prompt-lookup speculative decoding in the engine: the same greedy tokens, stops, limits, log-probabilities
and events as step-by-step decoding, in fewer forward passes (tiny Llama on the lean step, tiny GPT-2 on
the model's own forward; offline, CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_engine import tiny  # noqa: F401  (the tiny Llama fixture)
from test_generate import tiny_model  # noqa: F401  (the tiny GPT-2 fixture)

from pycodegen.generate.engine import Completion, DecodeParams, Engine, Event, lookup_draft

PROMPTS = [
    "def add(a, b):",
    "Write",
    "def mul(x, y):\n    return x * y\n# multiply",
    # repetitive: what prompt lookup is for
    "def add(a, b):\n    return a + b\ndef add(a, b):\n    return a + b\ndef add(a, b):",
    "Here is the code:\n```python\nx = 1\n```\nHere is the code:\n```python\n",
]
DRAFT = 4


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """The same weights decoded by the lean Llama step or by GPT-2's own forward (DynamicCache)."""
    path = request.getfixturevalue("tiny" if request.param == "llama" else "tiny_model")
    engine = Engine.load(str(path), dtype="fp32", max_batch=4)
    assert engine.backend.lean == (request.param == "llama")  # both verification paths are covered
    return engine


def decode(engine: Engine, draft: int, prompt: str, params: DecodeParams) -> tuple[Completion, list[Any]]:
    """One request decoded alone with `draft` tokens of prompt lookup (0 = step by step): its completion
    and its events, each paired with the number of forward passes done before it was delivered."""
    engine.prompt_lookup = draft
    events: list[tuple[int, Event]] = []
    stream = engine.submit(prompt, params, listener=lambda e: events.append((engine.stats["steps"], e)))
    engine.run_until(lambda: stream.done)
    return stream.result()[0], events


def counted(engine: Engine) -> dict[str, int]:
    return {k: engine.stats[k] for k in ("steps", "tokens_generated", "drafted", "accepted")}


def test_lookup_draft_takes_the_most_recent_occurrence_of_the_longest_ngram() -> None:
    assert lookup_draft([1, 2, 3, 7, 8, 2, 3, 5, 6, 1, 2, 3], 3) == [7, 8, 2]  # 3-gram, not the 2-gram
    assert lookup_draft([2, 3, 7, 2, 3, 5, 9, 2, 3], 2) == [5, 9]  # the latest of two 2-gram matches
    assert lookup_draft([4, 1, 5, 1], 5) == [5, 1]  # the continuation may run into the tail itself
    assert lookup_draft([1, 2, 3, 4], 3) == [] and lookup_draft([], 3) == []


def test_greedy_tokens_are_those_of_step_by_step_decoding_in_fewer_passes(engine: Engine) -> None:
    params = DecodeParams(max_new_tokens=40)
    before = counted(engine)
    plain = [decode(engine, 0, p, params)[0] for p in PROMPTS]
    middle = counted(engine)
    fast = [decode(engine, DRAFT, p, params)[0] for p in PROMPTS]
    after = counted(engine)
    assert [c.token_ids for c in fast] == [c.token_ids for c in plain]
    assert [(c.text, c.finish_reason) for c in fast] == [(c.text, c.finish_reason) for c in plain]
    assert len({c.text for c in plain}) == len(PROMPTS)  # distinct texts: the comparison can fail
    assert middle["drafted"] == before["drafted"]  # off means off
    tokens = after["tokens_generated"] - middle["tokens_generated"]
    assert after["accepted"] - middle["accepted"] > 0
    # every pass but the prefills' delivers one token or more
    assert after["steps"] - middle["steps"] < tokens - len(PROMPTS)
    assert middle["steps"] - before["steps"] == middle["tokens_generated"] - before["tokens_generated"] - 5


def test_stops_and_max_new_tokens_end_a_choice_in_the_middle_of_a_draft(engine: Engine) -> None:
    prompt = PROMPTS[3]
    full, _ = decode(engine, 0, prompt, DecodeParams(max_new_tokens=40))
    stopped_in_draft = ended_in_multi_token_pass = 0
    pieces = [engine.tokenizer.decode([t]) for t in full.token_ids]
    stops = [DecodeParams(max_new_tokens=40, stop=[p]) for p in dict.fromkeys(pieces[1:]) if p.strip()]
    for params in [*stops, *(DecodeParams(max_new_tokens=cut) for cut in range(2, 8))]:
        expected, plain_events = decode(engine, 0, prompt, params)
        before = counted(engine)
        done, events = decode(engine, DRAFT, prompt, params)
        passes, accepted = (engine.stats[k] - before[k] for k in ("steps", "accepted"))
        assert (done.text, done.token_ids, done.finish_reason) == (
            expected.text,
            expected.token_ids,
            expected.finish_reason,
        )
        # the same events: one per token, the same text streamed, nothing after the end
        assert [(e.text, e.token_ids, e.finish_reason) for _, e in events] == [
            (e.text, e.token_ids, e.finish_reason) for _, e in plain_events
        ]
        # fewer tokens than the prefill's, the accepted drafts and one per pass: a draft was cut short
        stopped_in_draft += len(events) < 1 + accepted + passes
        ended_in_multi_token_pass += len(events) > 1 and events[-1][0] == events[-2][0]  # from one pass
    assert stopped_in_draft >= 1 and ended_in_multi_token_pass >= 2


def test_logprobs_are_those_of_step_by_step_decoding(engine: Engine) -> None:
    params = DecodeParams(max_new_tokens=24, logprobs=3)
    for prompt in (PROMPTS[0], PROMPTS[3]):
        accepted = engine.stats["accepted"]
        expected, _ = decode(engine, 0, prompt, params)
        done, _ = decode(engine, DRAFT, prompt, params)
        assert engine.stats["accepted"] > accepted or prompt == PROMPTS[0]
        assert done.token_ids == expected.token_ids and done.logprobs and expected.logprobs
        assert len(done.logprobs) == len(expected.logprobs) == len(done.token_ids)
        for got, want in zip(done.logprobs, expected.logprobs, strict=True):
            assert got["token"] == want["token"] and list(got["top"]) == list(want["top"])
            assert got["logprob"] == pytest.approx(want["logprob"], abs=1e-4)
            assert list(got["top"].values()) == pytest.approx(list(want["top"].values()), abs=1e-4)


def test_a_request_joining_a_speculating_row_and_a_cancelled_one(engine: Engine) -> None:
    long, short = DecodeParams(max_new_tokens=40), DecodeParams(max_new_tokens=6)
    expected_long = decode(engine, 0, PROMPTS[3], long)[0].token_ids
    expected_short = decode(engine, 0, PROMPTS[2], short)[0].token_ids
    engine.prompt_lookup = DRAFT
    accepted = engine.stats["accepted"]
    first = engine.submit(PROMPTS[3], long)
    for _ in range(4):
        engine.step()
    assert engine.stats["accepted"] > accepted and not first.done  # it speculated, and runs on
    joined = engine.submit(PROMPTS[2], short)  # joins the state a speculative step left
    engine.step()
    assert engine.stats["running"] == 2
    engine.run_until(lambda: joined.done)
    engine.run_until(lambda: first.done)  # alone again: speculating again
    assert joined.result()[0].token_ids == expected_short
    assert first.result()[0].token_ids == expected_long
    cancelled = engine.submit(PROMPTS[3], long)
    for _ in range(2):
        engine.step()
    cancelled.cancel()
    after = engine.submit(PROMPTS[2], short)  # the engine goes on from where the cancelled row left it
    engine.run_until(lambda: after.done)
    assert cancelled.result()[0].finish_reason == "cancelled"
    assert after.result()[0].token_ids == expected_short and engine.stats["running"] == 0


def test_sampled_and_batched_rows_do_not_speculate(tiny: Path) -> None:  # noqa: F811
    engine = Engine.load(str(tiny), dtype="fp32", prompt_lookup=0)
    greedy = DecodeParams(max_new_tokens=16)
    sampled = DecodeParams(max_new_tokens=16, temperature=1.0, seed=3)
    expected = [texts(engine, [PROMPTS[3]], sampled), texts(engine, PROMPTS[3:], greedy)]
    engine.prompt_lookup = DRAFT
    assert [texts(engine, [PROMPTS[3]], sampled), texts(engine, PROMPTS[3:], greedy)] == expected
    assert engine.stats["drafted"] == 0
    engine.generate(PROMPTS[3:4], greedy)
    assert engine.stats["drafted"] > 0


def texts(engine: Engine, prompts: list[str], params: DecodeParams) -> list[tuple[str, str]]:
    return [(c[0].text, c[0].finish_reason) for c in engine.generate(prompts, params)]


def test_draft_counts_in_the_servers_metrics(tiny: Path) -> None:  # noqa: F811
    from prometheus_client import generate_latest

    from pycodegen.serve.scheduler import Scheduler

    engine = Engine.load(str(tiny), dtype="fp32", prompt_lookup=DRAFT)
    engine.generate(PROMPTS[3:4], DecodeParams(max_new_tokens=16))
    scheduler = Scheduler(engine, max_batch=1, queue_size=0, request_timeout=1.0)
    text = generate_latest(scheduler.metrics.registry).decode()
    rows = [line.split() for line in text.splitlines() if line.startswith("pycodegen_draft")]
    counts = {name: float(value) for name, value in rows}
    assert counts["pycodegen_draft_tokens_drafted_total"] == engine.stats["drafted"] > 0
    assert counts["pycodegen_draft_tokens_accepted_total"] == engine.stats["accepted"] > 0


def test_on_by_default_except_for_int8(tiny: Path) -> None:  # noqa: F811
    from pycodegen.config import GenerateConfig, ServeConfig
    from pycodegen.generate.engine import PROMPT_LOOKUP

    assert GenerateConfig().prompt_lookup is None and ServeConfig().prompt_lookup is None  # the engine's
    assert Engine.load(str(tiny), dtype="fp32").prompt_lookup == PROMPT_LOOKUP > 0
    assert Engine.load(str(tiny), dtype="int8").prompt_lookup == 0
    assert Engine.load(str(tiny), dtype="int8", prompt_lookup=3).prompt_lookup == 3
