"""The decoding engine: batched = alone, requests joining and leaving, cancellation, stops, seeds,
log-probabilities, and every model family loading from its checkpoint directory (offline, CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import functions_dataset
from rich.console import Console

from pycodegen.generate.engine import DecodeParams, Engine, EngineError, FimUnsupported

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "def mul(x, y):\n    return x * y\n# multiply two numbers\n",
    "Write a function that returns the sum of a list.",
] * 20
PROMPTS = ["def add(a, b):", "Write", "def mul(x, y):\n    return x * y\n# multiply"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer, 32-wide Llama (rotary positions: position ids matter) with a BPE trained on CORPUS,
    trained a few steps so greedy text varies, saved as an HF directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    ids = torch.tensor([tokenizer("".join(CORPUS[:3]) * 3, add_special_tokens=False)["input_ids"]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(30):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    directory = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def engine(tiny: Path) -> Engine:
    return Engine.load(str(tiny), max_batch=8)


def texts(engine: Engine, prompts: list[str], params: DecodeParams) -> list[str]:
    return [c[0].text for c in engine.generate(prompts, params)]


def test_greedy_alone_equals_batched_with_prompts_of_different_lengths(engine: Engine) -> None:
    params = DecodeParams(max_new_tokens=16)
    alone = [texts(engine, [p], params)[0] for p in PROMPTS]
    assert texts(engine, PROMPTS, params) == alone
    assert len(set(alone)) == len(alone) and all(alone)  # distinct, non-empty: the check can fail


def test_the_step_gives_the_same_text_through_either_kernel(tiny: Path) -> None:
    """The lean Llama step's Linears run through torch's default path or oneDNN, whichever
    `_plan_kernels` timed faster on this CPU: both give the model's own logits and the same greedy text,
    alone and batched."""
    from pycodegen.generate.engine import _pack_for_onednn

    engine = Engine.load(str(tiny), max_batch=8)
    backend = engine.backend
    assert backend.lean
    params = DecodeParams(max_new_tokens=16)
    planned = texts(engine, PROMPTS, params)
    assert backend._kernels is not None  # timed on the first step
    linears = [m for m in backend.model.modules() if type(m) is torch.nn.Linear]
    assert len(linears) == 8  # 7 per layer + the output layer
    backend._kernels = {}  # torch's default path for every Linear
    assert texts(engine, PROMPTS, params) == planned
    assert [texts(engine, [p], params)[0] for p in PROMPTS] == planned
    backend._kernels = {id(m): (_pack_for_onednn(m), True, True) for m in linears}  # oneDNN for all
    assert texts(engine, PROMPTS, params) == planned
    assert [texts(engine, [p], params)[0] for p in PROMPTS] == planned
    ids = torch.tensor([backend.encode(PROMPTS[0])])
    with torch.no_grad():
        want = backend.model(input_ids=ids).logits[0, -1]
        _, state = backend.prefill(ids[0, :-1].tolist())
        got, _ = backend.extend(state, ids[:, -1:])
        torch.testing.assert_close(got[0, -1], want, rtol=1e-4, atol=1e-4)
        # the plan's packed weight is what a planned Linear reads: an all-zero one gives zero logits
        head = backend.model.lm_head
        zero = torch.nn.Linear(head.in_features, head.out_features, bias=False)
        torch.nn.init.zeros_(zero.weight)
        backend._kernels = {id(head): (_pack_for_onednn(zero), True, True)}
        _, state = backend.prefill(ids[0, :-1].tolist())
        got, _ = backend.extend(state, ids[:, -1:])
    assert not got.any()


def test_load_started_loads_in_the_thread_that_decodes(tiny: Path, engine: Engine) -> None:
    import threading

    started = Engine.load_started(str(tiny), max_batch=4)
    try:
        thread = started._thread
        assert thread is not None and thread.is_alive() and thread is not threading.current_thread()
        started.start()  # already decoding: a no-op
        assert started._thread is thread
        params = DecodeParams(max_new_tokens=12)
        done = started.submit(PROMPTS[0], params).result(timeout=60)
        assert done[0].text == texts(engine, [PROMPTS[0]], params)[0]
    finally:
        started.stop()
    assert not thread.is_alive() and started._thread is None
    with pytest.raises(Exception, match="no/such"):
        Engine.load_started(str(tiny / "no" / "such"))


def test_requests_join_and_leave_the_running_batch(engine: Engine) -> None:
    long, short = DecodeParams(max_new_tokens=20), DecodeParams(max_new_tokens=4)
    expected_long = texts(engine, [PROMPTS[0]], long)[0]
    expected_short = texts(engine, [PROMPTS[2]], short)[0]
    first = engine.submit(PROMPTS[0], long)
    for _ in range(6):
        engine.step()
    assert engine.stats["running"] == 1
    joined = engine.submit(PROMPTS[2], short)  # joins mid-run, with a longer prompt than the row running
    engine.step()
    assert engine.stats["running"] == 2
    engine.run_until(lambda: joined.done)
    assert engine.stats["running"] == 1 and not first.done  # it left; the first goes on
    engine.run_until(lambda: first.done)
    assert joined.result()[0].text == expected_short and joined.result()[0].finish_reason == "length"
    assert first.result()[0].text == expected_long


def test_cancellation_frees_the_slot_for_a_waiting_request(tiny: Path) -> None:
    engine = Engine.load(str(tiny), max_batch=1)
    running = engine.submit(PROMPTS[0], DecodeParams(max_new_tokens=50))
    waiting = engine.submit(PROMPTS[1], DecodeParams(max_new_tokens=3))
    for _ in range(3):
        engine.step()
    assert engine.stats["waiting"] == 1 and engine.stats["running"] == 1
    running.cancel()
    engine.step()
    assert running.done and running.result()[0].finish_reason == "cancelled"
    assert engine.stats["running"] == 1 and engine.stats["waiting"] == 0  # the waiting one got the slot
    engine.run_until(lambda: waiting.done)
    events = list(running.events(timeout=1))
    assert events[-1].finish_reason == "cancelled" and sum(len(e.token_ids) for e in events) < 50


def test_stop_strings_end_the_choice_and_are_never_streamed(engine: Engine) -> None:
    full = texts(engine, [PROMPTS[0]], DecodeParams(max_new_tokens=24))[0]
    # a stop that first appears in the middle of the greedy text
    stop = next(full[i : i + 3] for i in range(4, len(full) - 3) if full.find(full[i : i + 3]) >= 4)
    stream = engine.submit(PROMPTS[0], DecodeParams(max_new_tokens=24, stop=["zzzz", stop]))
    engine.run_until(lambda: stream.done)
    done = stream.result()[0]
    assert done.text == full[: full.find(stop)] and done.finish_reason == "stop"
    streamed = "".join(e.text for e in stream.events(timeout=1))
    assert streamed == done.text


def test_n_samples_with_a_seed_are_the_same_alone_or_batched(engine: Engine) -> None:
    sampled = DecodeParams(max_new_tokens=12, temperature=1.0, top_p=0.95, top_k=50, n=3, seed=7)
    alone = [c.text for c in engine.generate([PROMPTS[1]], sampled)[0]]
    with_others = engine.generate([PROMPTS[0], PROMPTS[1], PROMPTS[2]], sampled)
    assert [c.text for c in with_others[1]] == alone
    assert len(set(alone)) > 1  # the n choices differ from each other
    other_seed = [
        c.text for c in engine.generate([PROMPTS[1]], DecodeParams(**{**sampled.__dict__, "seed": 8}))[0]
    ]
    assert other_seed != alone


def test_logprobs_sum_to_the_models_own_score_of_the_completion(engine: Engine) -> None:
    assert engine.backend.lean  # the Llama decode step of our own is what is checked against the model
    done = engine.generate([PROMPTS[0]], DecodeParams(max_new_tokens=10, logprobs=3))[0][0]
    assert done.logprobs is not None and len(done.logprobs) == len(done.token_ids) == 10
    prompt = engine.tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + done.token_ids])
    with torch.no_grad():
        logp = torch.log_softmax(engine.model(ids).logits[0].float(), -1)  # (T, V)
    score = sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(done.token_ids))
    assert sum(e["logprob"] for e in done.logprobs) == pytest.approx(score, abs=1e-4)
    first = done.logprobs[0]
    assert len(first["top"]) == 3 and first["top"][first["token"]] == pytest.approx(first["logprob"])


def test_background_thread_listener_and_validation(engine: Engine) -> None:
    got: list[Any] = []
    engine.start()
    try:
        stream = engine.submit(PROMPTS[1], DecodeParams(max_new_tokens=5), listener=got.append)
        stream.result(timeout=30)
    finally:
        engine.stop()
    assert got[-1].finish_reason == "length" and "".join(e.text for e in got) == stream.result()[0].text
    with pytest.raises(EngineError, match="reads at most 256"):
        engine.submit("def add(a, b):" * 200, DecodeParams())
    with pytest.raises(EngineError, match="beam search is for the encoder-decoders"):
        engine.submit("x", DecodeParams(beams=2))
    with pytest.raises(FimUnsupported, match="not trained for fill-in-the-middle"):
        engine.fim_prompt("def f(", "):")


# -- every family from its checkpoint directory ----------------------------------------------------------
QUIET = Console(quiet=True)
TINY_ARGS = {
    "char-rnn": {"n_embd": 16, "n_layer": 1},
    "seq2seq": {"d_model": 32, "n_head": 4, "n_layer_enc": 1, "n_layer_dec": 1, "d_ff": 64, "dropout": 0.0},
    "new:llama": {"num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 64},
    "new:t5": {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_heads": 4},
}


@pytest.fixture(scope="module")
def functions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return functions_dataset(tmp_path_factory, files=8)


@pytest.fixture(scope="module")
def chars(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pycodegen.data.tokenizers import CharVocab

    root = tmp_path_factory.mktemp("data") / "chars"
    root.mkdir()
    rows = [(f"def f{i}(x):\n    return x * {i}\n" * 3)[:40] for i in range(24)]
    CharVocab.build(rows).save(root / "vocab.json")
    for split, part in (("train", rows), ("valid", rows[:4]), ("test", [])):
        (root / f"{split}.jsonl").write_text(
            "".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(part))
        )
    (root / "manifest.json").write_text(json.dumps({"task": "char-stream"}))
    return root


def trained(data: Path, out: Path, family: str, model: str | None = None, **kw: Any) -> Path:
    """A tiny model trained 2 steps; its final checkpoint, with the dataset deleted."""
    from pycodegen.config import TrainConfig
    from pycodegen.train.loop import train

    copy = out.parent / f"{out.name}-data"
    shutil.copytree(data, copy)
    cfg = TrainConfig(
        family=family,
        data=copy,
        out=out,
        model=model,
        max_steps=2,
        batch_size=4,
        lr=1e-2,
        eval_every=1000,
        save_every=1000,
        eval_samples=0,
        max_length=64,
        model_args=TINY_ARGS[model or family],
        **kw,
    )
    train(cfg, QUIET)
    shutil.rmtree(copy)
    return out / "final"


@pytest.mark.parametrize(
    ("family", "model", "mode"),
    [
        ("char-rnn", None, "full"),
        ("seq2seq", None, "full"),
        ("hf-causal", "new:llama", "lora"),
        ("hf-seq2seq", "new:t5", "full"),
    ],
)
def test_every_family_generates_from_its_checkpoint_directory(
    family: str, model: str | None, mode: str, chars: Path, functions: Path, tmp_path: Path
) -> None:
    from pycodegen.models.checkpoint import load_checkpoint
    from pycodegen.models.family import is_adapter

    checkpoint = trained(
        chars if family == "char-rnn" else functions, tmp_path / "run", family, model, mode=mode
    )
    engine = Engine.load(str(checkpoint))
    assert engine.family == family
    prompt = "def f1(x):" if family == "char-rnn" else '"""Add the values up."""\ndef total(values):'
    params = DecodeParams(max_new_tokens=6, beams=2 if "seq2seq" in family else 1)
    done = engine.generate([prompt, prompt], params)
    assert done[0][0].text == done[1][0].text and done[0][0].finish_reason in ("stop", "length")
    # the engine's text is the family's own decoding of the checkpoint
    fam, loaded = load_checkpoint(checkpoint)
    if family in ("seq2seq", "hf-seq2seq"):
        assert done[0][0].text == fam.generate(loaded, [prompt], 6, beams=2)[0]
    elif family == "char-rnn":
        assert done[0][0].text == fam.generate(loaded, [prompt], 6)[0]
        with pytest.raises(EngineError, match="takes raw prompts, not prompt mode 'chat'"):
            engine.prompt_mode("chat")
    else:
        assert is_adapter(engine.model)  # LoRA applied without merging: still a PEFT model
        expected = engine.tokenizer.decode(done[0][0].token_ids)
        assert done[0][0].text == expected and len(done[0][0].token_ids) >= 1


def test_retrieval_checkpoints_are_refused_in_one_line(functions: Path, tmp_path: Path) -> None:
    from pycodegen.config import TrainConfig
    from pycodegen.train.loop import train

    cfg = TrainConfig(
        family="retrieval",
        data=functions,
        out=tmp_path / "r",
        max_steps=1,
        batch_size=4,
        eval_every=1000,
        save_every=1000,
        eval_samples=0,
        model_args={"dim": 16},
    )
    train(cfg, QUIET)
    with pytest.raises(EngineError, match="is a retrieval model: it does not generate text"):
        Engine.load(str(tmp_path / "r" / "final"))


# -- the embedded model ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedded() -> Engine:
    """The embedded model, loaded by the path of its .gguf file (the zoo name resolves to the same)."""
    from pycodegen.zoo import resolve_model

    resolved = resolve_model("smollm2-135m-instruct")
    return Engine.load(str(resolved.path / str(resolved.gguf_file)))


def test_embedded_model_greedy_alone_equals_batched(embedded: Engine) -> None:
    prompts = [
        embedded.format_prompt("Write a Python function that reverses a string."),
        embedded.format_prompt("What is 2+2?"),
        "def fibonacci(n):\n    ",
    ]
    params = DecodeParams(max_new_tokens=8)
    alone = [texts(embedded, [p], params)[0] for p in prompts]
    assert texts(embedded, prompts, params) == alone
    assert len(set(alone)) == 3


def test_a_gguf_file_loads_by_its_path(embedded: Engine) -> None:
    assert embedded.name.endswith(".gguf") and embedded.prompt_mode() == "chat"
    done = embedded.generate(["def add(a, b):\n    return"], DecodeParams(max_new_tokens=3))[0][0]
    assert done.text.strip() and done.finish_reason == "length"
