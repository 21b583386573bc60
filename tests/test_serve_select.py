"""`best_of` on POST /v1/completions, with pycodegen's `select` extension: a real server in-process over a
tiny hand-wired model whose two possible completions of an `add` prompt are known: a likelier one that
fails the docstring's example and a less likely one that passes it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_serve import Served, run_server

PROMPT = 'def add(a, b):\n    """Add.\n\n    >>> add(1, 2)\n    3\n    """\n'
PASSING, FAILING = "    return a + b", "  pass"  # P(first token): 0.25 and 0.75
PASSING_IDS, FAILING_IDS = [333, 1003, 253, 1232, 278], [216, 1301]  # as SmolLM2's tokenizer splits them
PROMPT_END = 198  # the prompt's last token, "\n"
EOS = 2


def _wired_model(out: Path) -> Path:
    """A 2-layer, 32-wide Llama that is a bigram table: the layers add nothing (their output projections
    are zero), each token of interest has a one-hot embedding, and the head maps it to its successor. After
    the prompt it starts the failing completion with probability 0.75, the passing one with 0.25; each
    then runs to its end and stops."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pycodegen.zoo import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    assert tokenizer(PASSING, add_special_tokens=False)["input_ids"] == PASSING_IDS
    assert tokenizer(FAILING, add_special_tokens=False)["input_ids"] == FAILING_IDS
    assert tokenizer(PROMPT, add_special_tokens=False)["input_ids"][-1] == PROMPT_END
    width = 32
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        eos_token_id=EOS,
        bos_token_id=tokenizer.bos_token_id,
    )
    model = LlamaForCausalLM(config)
    successors: dict[int, dict[int, float]] = {
        PROMPT_END: {FAILING_IDS[0]: math.log(0.75), PASSING_IDS[0]: math.log(0.25)}
    }
    for chain in (PASSING_IDS, FAILING_IDS):
        for token, successor in zip(chain, [*chain[1:], EOS], strict=True):
            successors[token] = {successor: 0.0}
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for state, (token, nexts) in enumerate(successors.items()):
            model.model.embed_tokens.weight[token, state] = 1.0  # the final norm scales it by sqrt(width)
            for successor, logprob in nexts.items():  # logit 40 + log p: every other token's is 0
                model.lm_head.weight[successor, state] = (40.0 + logprob) / math.sqrt(width)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "pycodegen.json").write_text(json.dumps({"family": "hf-causal"}))
    return out


@pytest.fixture(scope="module")
def wired(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from pycodegen.generate.engine import Engine

    engine = Engine.load(str(_wired_model(tmp_path_factory.mktemp("wired"))), dtype="fp32", max_batch=8)
    yield from run_server(engine, None, max_batch=8, queue_size=4, max_n=8, select_examples=True)


ASK = {"prompt": PROMPT, "max_tokens": 8, "temperature": 1.0, "seed": 3, "best_of": 8}


def test_best_of_select_examples_picks_a_passing_sample_over_a_likelier_failing_one(wired: Served) -> None:
    status, plain = wired.post("/v1/completions", {**ASK, "best_of": None, "n": 8}, key=None)
    assert status == 200, plain
    drawn = [c["text"] for c in plain["choices"]]
    assert set(drawn) == {PASSING, FAILING}, drawn  # the same seed draws both kinds: the test can tell
    tokens = sum(len(PASSING_IDS if t == PASSING else FAILING_IDS) + 1 for t in drawn)  # + EOS each

    status, by_logprob = wired.post("/v1/completions", ASK, key=None)
    assert status == 200, by_logprob
    assert [c["text"] for c in by_logprob["choices"]] == [FAILING]  # OpenAI's rule: the likeliest
    assert by_logprob["choices"][0]["logprobs"] is None  # ranked by log-probabilities, not asked to show
    assert by_logprob["selection"] == {"best_of": 8, "select": "logprob"}
    assert by_logprob["usage"]["completion_tokens"] == tokens  # every one of the 8 samples counts

    status, by_examples = wired.post("/v1/completions", {**ASK, "select": "examples"}, key=None)
    assert status == 200, by_examples
    assert [c["text"] for c in by_examples["choices"]] == [PASSING]
    selection = by_examples["selection"]
    assert selection["examples"] == 1 and selection["passing"] == drawn.count(PASSING)
    assert selection["passed_examples"] == [True] and by_examples["usage"]["completion_tokens"] == tokens

    status, two = wired.post("/v1/completions", {**ASK, "select": "examples", "n": 2}, key=None)
    assert status == 200 and [c["index"] for c in two["choices"]] == [0, 1]
    expected = [PASSING, PASSING if drawn.count(PASSING) > 1 else FAILING]
    assert [c["text"] for c in two["choices"]] == expected


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"best_of": 2, "n": 3}, "best_of", "at least n"),
        ({"best_of": 9}, "best_of", "cap of 8"),
        ({"stream": True}, "stream", "cannot be streamed"),
        ({"temperature": 0}, "temperature", "temperature > 0"),
        ({"best_of": None, "select": "examples"}, "select", "best_of > n"),
        ({"select": "examples", "suffix": "x"}, "suffix", "suffix"),
        ({"select": "best"}, "select", "'logprob' or 'examples'"),
    ],
)
def test_best_of_refusals_say_which_field(wired: Served, extra: dict, param: str, words: str) -> None:
    status, body = wired.post("/v1/completions", {**ASK, **extra}, key=None)
    assert status == 400 and body["error"]["param"] == param and words in body["error"]["message"], body


def test_select_examples_is_refused_when_the_server_does_not_run_samples(tmp_path: Path) -> None:
    from pycodegen.generate.engine import Engine

    engine = Engine.load(str(_wired_model(tmp_path)), dtype="fp32", max_batch=2)
    for served in run_server(engine, None, max_n=8):  # select_examples left off
        status, body = served.post("/v1/completions", {**ASK, "select": "examples"}, key=None)
        assert status == 400 and body["error"]["code"] == "select_examples_off", body
        assert "--select-examples" in body["error"]["message"]
        assert served.scheduler.metrics.prompt_tokens._value.get() == 0  # refused before decoding
        status, body = served.post("/v1/completions", ASK, key=None)
        assert status == 200 and body["choices"][0]["text"] == FAILING  # logprob needs no sandbox


def test_judging_past_the_time_limit_answers_504_and_the_server_judges_again(tmp_path: Path) -> None:
    """The judging is held to the request's time limit: a prompt whose program sleeps at import outlives
    it (504, at about the limit), and the next request is judged (the sandbox skipped the rest)."""
    import time

    from pycodegen.generate.engine import Engine

    engine = Engine.load(str(_wired_model(tmp_path)), dtype="fp32", max_batch=8)
    sleepy = "import time\ntime.sleep(3)\n\n\n" + PROMPT  # same last token: the same two completions
    for served in run_server(engine, None, max_n=8, select_examples=True, request_timeout=1.5):
        started = time.monotonic()
        status, body = served.post(
            "/v1/completions", {**ASK, "prompt": sleepy, "select": "examples"}, key=None
        )
        assert status == 504 and body["error"]["code"] == "timeout", body
        assert time.monotonic() - started < 3  # cut at the limit, not when the samples finish
        status, body = served.post("/v1/completions", {**ASK, "select": "examples"}, key=None)
        assert status == 200 and body["choices"][0]["text"] == PASSING, body
