"""The one decoding engine: requests of different lengths and settings decoded together step by step with
a KV cache, joining and leaving the running batch (continuous batching), for every model family.

`Engine.load(ref)` takes any model reference (zoo name, HF causal or seq2seq directory, .gguf file, a
pycodegen checkpoint of any family, LoRA adapters applied without merging). `generate`, `evaluate
--model`, dev evaluation and `serve` all decode through it; it knows no HTTP.

How a step works (HF causal models): the running rows share one left-padded KV cache (transformers'
DynamicCache; each row's padding is masked and its position ids count only its own tokens). A request
that joins is prefilled alone (batch 1, logits of the last position only) and its cache is padded and
concatenated onto the batch's; a row that finishes or is cancelled is dropped from the cache, and columns
that are padding in every remaining row are trimmed. Each step then feeds every row's last token at
once. Sampling is per row with the request's own seeded `torch.Generator`, so a seeded request samples
the same text whatever else is in the batch. A greedy request decoding alone drafts tokens from its own
text and verifies them in one pass (prompt lookup, `Engine._draft`), or where there is nothing to look up
takes the model's draft heads' guesses (`generate.draft`): the same tokens, fewer passes. The
char-RNN runs the same loop over its recurrent state; the encoder-decoders (hf-seq2seq, the from-scratch
seq2seq) decode a request whole with their beam search.

Why our own loop and not transformers' continuous batching (`generate_batch`, `init_continuous_batching`
in transformers 5.24): its manager has per-request temperature/top-p and cancellation, but one sampling
generator for the whole batch (no per-request seeds, so a sample depends on its batch-mates), no stop
strings, no top-k log-probabilities, and a paged-attention cache sized for GPUs; measured on this
2-core CPU (bench/engine_bench.py, 1 thread, README "Measured · Engine") it was also much slower: 1.1
tok/s single stream and 20.3 tok/s for 8 requests, against this loop's 15.2 and 50.7 (plain `generate()`
17.8; fp32 weights are 538 MB per token, which bounds any fp32 decoder near 18 tok/s here; int8: 27.5).
Levers measured there: logits of the last position only (`logits_to_keep=1`), calling the model's
forward directly (no `generate()` per-call set-up), int8 dynamic quantization of Linear layers
(`dtype="int8"`, CPU; changes the text slightly, and since activations are quantized with one scale per
batch, an int8 row's greedy text can depend on its batch-mates), bf16 (only where the CPU has AMX, or on
CUDA), and for Llama-architecture models a decode step through the model's own modules without
transformers' per-call machinery (`CausalBackend._llama_step`, same text, 5-10 % less CPU per token).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pycodegen.errors import PycodegenError
from pycodegen.generate.postprocess import code_block_end

DTYPES = ("auto", "fp32", "bf16", "int8")
# Prompt lookup is on by default: it gives the greedy tokens step-by-step decoding gives (16 of 16
# prompts of the benches identical at 0, 2 and 8 draft tokens, fp32) and cost no request more CPU than
# without in bench runs; 2 draft tokens at most did better than 4 or 8, since a verification row costs
# about a fifth of a step here (1 thread, fp32) whether or not its draft is accepted. (see Engine._draft)
# Not for int8: dynamic quantization gives all rows of a pass one activation scale, so verifying a draft
# changes the row's arithmetic and its greedy text (16 of 16 bench prompts differed): off unless asked.
PROMPT_LOOKUP = 2
LOOKUP_SHORTEST_WITH_HEADS = 3  # the shortest n-gram match prompt lookup takes over draft heads' guesses: 3
# gave 1.47x generate() against 2's 1.44x (engine_bench prompt, fp32, medians of 3; heads alone 1.49x)


class EngineError(PycodegenError):
    """A request the engine cannot serve (prompt too long, settings the model's family lacks, ...)."""


class FimUnsupported(EngineError):
    """A fill-in-the-middle request for a model that was not trained for it."""


@dataclass
class DecodeParams:
    """How one request is decoded."""

    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    n: int = 1  # choices for this request
    seed: int | None = None
    stop: list[str] = field(default_factory=list)  # stop strings; the stop text is not returned
    logprobs: int | None = None  # None = none; k = the chosen token's logprob + top-k alternatives
    beams: int = 1  # beam search (seq2seq families); n <= beams
    # End a choice once its first fenced code block has closed (chat models: what follows is prose).
    stop_after_code_block: bool = False
    ignore_eos: bool = False  # decode past end-of-sequence (benchmarks: a fixed number of tokens)


@dataclass
class Event:
    """New output of one choice of a request, delivered in order."""

    index: int  # which of the n choices
    text: str  # new text since the previous event for this choice (may be "")
    token_ids: list[int]
    logprobs: list[dict[str, Any]] | None  # per token: {"token", "logprob", "top": {token: logprob}}
    finish_reason: str | None  # None while running; "stop" | "length" | "cancelled" | "error" at the end


@dataclass
class Completion:
    """One finished choice."""

    text: str
    token_ids: list[int]
    logprobs: list[dict[str, Any]] | None
    finish_reason: str

    @property
    def mean_logprob(self) -> float | None:
        """The mean log-probability of its tokens (what selection by execution ranks by), if recorded."""
        values = [t["logprob"] for t in self.logprobs or []]
        return round(sum(values) / len(values), 6) if values else None


def decode_params(
    sampling: Any, stop: list[str] | None = None, stop_after_code_block: bool = False
) -> DecodeParams:
    """DecodeParams from a SamplingConfig (generate, evaluate --model): every prompt uses the run's seed,
    its n choices seeds derived from it."""
    return DecodeParams(
        max_new_tokens=sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p if sampling.temperature > 0 else 1.0,
        top_k=getattr(sampling, "top_k", 0),  # GenerateConfig has it; EvaluateConfig does not
        n=sampling.n,
        seed=sampling.seed,
        stop=list(stop or []),
        stop_after_code_block=stop_after_code_block,
    )


def pick_dtype(dtype: str, device: torch.device) -> str:
    """The concrete dtype for `auto`: bf16 on CUDA and on CPUs with AMX (bf16 matrix units), else fp32
    (AVX-512 without AMX runs bf16 matmuls slower than fp32)."""
    if dtype not in DTYPES:
        raise EngineError(f"dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    if device.type == "cuda":
        return "bf16"
    return "bf16" if has_amx() else "fp32"


def has_amx() -> bool:
    """Whether this CPU has AMX bf16 tiles (Linux /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return any(line.startswith("flags") and "amx_bf16" in line for line in fh)
    except OSError:
        return False


# -- backends: how one model family turns token ids into next-token logits --------------------------------
class StepBackend:
    """A model decoded one token per step over a batch of rows with per-row state (a KV cache or an RNN
    state). `prefill` runs one new sequence alone; `merge`, `select` and `step` work on batch states."""

    eos_ids: set[int]
    max_len: int | None = None  # the model's context (prompt + generated), None = unbounded

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def prefill(self, ids: list[int]) -> tuple[torch.Tensor, Any]:
        """Logits after the prompt (1, V) and the state of a one-row batch."""
        raise NotImplementedError

    def step(self, state: Any, tokens: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Feed one token per row (B,); the next logits (B, V) and the new state."""
        raise NotImplementedError

    def select(self, state: Any, rows: list[int]) -> Any:
        """The state of the given rows only (a row may repeat: n choices of one prompt)."""
        raise NotImplementedError

    def merge(self, state: Any, other: Any) -> Any:
        """One state holding the rows of `state` then those of `other`."""
        raise NotImplementedError

    # Speculative decoding (prompt lookup): a backend that can feed several tokens per row in one forward
    # pass and take the last ones back. A recurrent state cannot be taken back, so only KV caches can.
    speculative: bool = False

    def extend(self, state: Any, tokens: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Feed T tokens per row (B, T) at once; the logits after each (B, T, V) and the new state."""
        raise NotImplementedError

    def crop(self, state: Any, count: int) -> Any:
        """The state without the last `count` tokens fed to every row (rejected draft tokens)."""
        raise NotImplementedError


@dataclass
class _KV:
    """A batch's shared, left-padded KV cache: `mask` (B, L) is 1 where a row has a token; `lengths` are
    each row's own token counts (its next position id)."""

    cache: Any
    mask: torch.Tensor
    lengths: torch.Tensor


class CausalBackend(StepBackend):
    """A transformers decoder-only model (a PeftModel with unmerged LoRA adapters included)."""

    def __init__(self, model: Any, tokenizer: Any, lean: bool = True) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        config = model.config
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos_list = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {int(e) for e in [*eos_list, tokenizer.eos_token_id] if e is not None}
        self.max_len = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None
        )
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.start_id = int(start) if start is not None else 0
        # Llama-architecture models (the embedded SmolLM2) decode through `_llama_step`; others (GPT-2,
        # PEFT-wrapped models, other attention implementations) through the model's own forward.
        self._kernels: dict[int, tuple[Any, bool, bool]] | None = None  # `_plan_kernels`, on first use
        self.drafter: Any = None  # generate.draft.Drafter: draft heads, where loaded
        self.last_hidden: torch.Tensor | None = None  # the last Llama step's final-norm states (B, T, C)
        self.lean = (
            lean
            and getattr(config, "model_type", None) == "llama"
            and type(model).__name__ == "LlamaForCausalLM"
            and getattr(config, "_attn_implementation", None) == "sdpa"
        )

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    speculative = True

    def _forward(self, ids: torch.Tensor, kv: _KV, positions: torch.Tensor, keep: int = 1) -> torch.Tensor:
        """The logits (B, keep, V) of the last `keep` positions of `ids` (B, T), appended to the cache."""
        out = self.model(
            input_ids=ids,
            attention_mask=kv.mask,
            position_ids=positions,
            cache=kv.cache,
            use_cache=True,
            logits_to_keep=keep,  # a prompt's other positions' logits are never needed
        )
        return out.logits[:, -keep:].float()  # (B, keep, V)

    def prefill(self, ids: list[int]) -> tuple[torch.Tensor, _KV]:
        from transformers import DynamicCache

        ids = ids or [self.start_id]  # an empty prompt starts from BOS
        tokens = torch.tensor([ids], device=self.device)  # (1, T)
        kv = _KV(
            DynamicCache(config=self.model.config),
            torch.ones_like(tokens),
            torch.tensor([len(ids)], device=self.device),
        )
        logits = self._forward(tokens, kv, torch.arange(len(ids), device=self.device)[None])
        return logits[:, -1], kv

    def step(self, state: _KV, tokens: torch.Tensor) -> tuple[torch.Tensor, _KV]:
        logits, state = self.extend(state, tokens[:, None])
        return logits[:, -1], state

    def extend(self, state: _KV, tokens: torch.Tensor) -> tuple[torch.Tensor, _KV]:
        count = tokens.shape[1]
        state.mask = torch.cat([state.mask, state.mask.new_ones(state.mask.shape[0], count)], dim=1)
        ids = tokens.to(self.device)  # (B, T)
        positions = state.lengths[:, None] + torch.arange(count, device=self.device)  # (B, T)
        if self.lean:
            logits = self._llama_step(ids, state, positions)
        else:
            logits = self._forward(ids, state, positions, keep=count)
        state.lengths = state.lengths + count
        return logits, state

    def crop(self, state: _KV, count: int) -> _KV:
        # Sliced like `select` does rather than through DynamicCache.crop, whose argument changed meaning
        # across transformers releases (an absolute length, now a negative count).
        if count > 0:
            for layer in state.cache.layers:
                layer.keys = layer.keys[:, :, :-count]
                layer.values = layer.values[:, :, :-count]
            state.mask, state.lengths = state.mask[:, :-count], state.lengths - count
        return state

    def _llama_step(self, ids: torch.Tensor, kv: _KV, positions: torch.Tensor) -> torch.Tensor:
        """T new tokens per row (B, T) of a Llama-architecture model through its own modules, without
        transformers' per-call machinery (mask building, kwargs plumbing, output objects): the same
        arithmetic as its forward with SDPA attention, a fifth of the per-step Python cost
        (bench/engine_bench.py). T is 1 for a decode step, 1 + the drafts for a speculative one; the
        logits of every new position (B, T, V)."""
        import torch.nn.functional as F

        decoder = self.model.model
        batch, count = ids.shape
        x = decoder.embed_tokens(ids)  # (B, T, C)
        cos, sin = decoder.rotary_emb(x, positions)  # (B, T, D)
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, D): broadcast over heads
        keep = kv.mask.bool()[:, None, None, :]  # (B, 1, 1, L): a row never attends its padding
        if count > 1:  # and a new token never attends the new tokens after it
            width = kv.mask.shape[1]
            causal = torch.ones(count, width, dtype=torch.bool, device=ids.device).tril(width - count)
            keep = keep & causal  # (B, 1, T, L)
        if self._kernels is None:  # timed in the thread that decodes, on the weights it will read
            self._kernels = _plan_kernels(
                [
                    m
                    for layer in decoder.layers
                    for m in (
                        layer.self_attn.q_proj,
                        layer.self_attn.k_proj,
                        layer.self_attn.v_proj,
                        layer.self_attn.o_proj,
                        layer.mlp.gate_proj,
                        layer.mlp.up_proj,
                        layer.mlp.down_proj,
                    )
                ]
                + [self.model.lm_head]
            )
        linear = self._linear
        for layer, cached in zip(decoder.layers, kv.cache.layers, strict=True):
            attn, mlp = layer.self_attn, layer.mlp
            h = layer.input_layernorm(x)
            q = linear(attn.q_proj, h).view(batch, count, -1, attn.head_dim).transpose(1, 2)  # (B, H, T, D)
            k = linear(attn.k_proj, h).view(batch, count, -1, attn.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
            v = linear(attn.v_proj, h).view(batch, count, -1, attn.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            cached.keys = torch.cat([cached.keys, k], dim=2)  # (B, Hkv, L, D)
            cached.values = torch.cat([cached.values, v], dim=2)
            y = F.scaled_dot_product_attention(
                q, cached.keys, cached.values, attn_mask=keep, scale=attn.scaling, enable_gqa=True
            )  # (B, H, T, D)
            x = x + linear(attn.o_proj, y.transpose(1, 2).reshape(batch, count, -1))
            h = layer.post_attention_layernorm(x)
            x = x + linear(mlp.down_proj, mlp.act_fn(linear(mlp.gate_proj, h)) * linear(mlp.up_proj, h))
        x = decoder.norm(x)
        if self.drafter is not None:
            self.last_hidden = x
        return linear(self.model.lm_head, x).float()  # (B, T, V)

    def _linear(self, module: Any, x: torch.Tensor) -> torch.Tensor:
        """`module(x)` for a Linear (B, T, C), through the kernel `_plan_kernels` timed faster for this
        weight's shape and this many rows (one, or several: a batch or a verification pass)."""
        plan = self._kernels.get(id(module)) if self._kernels else None
        if plan is None:
            return module(x)
        packed, for_one, for_many = plan
        if for_many if x.shape[0] * x.shape[1] > 1 else for_one:
            return torch.ops.mkldnn._linear_pointwise(x, packed, module.bias, "none", [], "")
        return module(x)

    def select(self, state: _KV, rows: list[int]) -> _KV:
        index = torch.tensor(rows, device=self.device)
        lengths = state.lengths[index]
        # Columns that are padding in every remaining row are dropped (the batch's longest row left).
        drop = int(state.mask.shape[1] - int(lengths.max()))
        for layer in state.cache.layers:
            layer.keys = layer.keys[index, :, drop:]
            layer.values = layer.values[index, :, drop:]
        return _KV(state.cache, state.mask[index, drop:], lengths)

    def merge(self, state: _KV, other: _KV) -> _KV:
        width = max(state.mask.shape[1], other.mask.shape[1])

        def left_pad(x: torch.Tensor, dim: int) -> torch.Tensor:
            missing = width - x.shape[dim]
            if missing == 0:
                return x
            shape = list(x.shape)
            shape[dim] = missing
            return torch.cat([x.new_zeros(shape), x], dim=dim)

        for mine, theirs in zip(state.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([left_pad(mine.keys, 2), left_pad(theirs.keys, 2)])
            mine.values = torch.cat([left_pad(mine.values, 2), left_pad(theirs.values, 2)])
        mask = torch.cat([left_pad(state.mask, 1), left_pad(other.mask, 1)])
        return _KV(state.cache, mask, torch.cat([state.lengths, other.lengths]))


def _pack_for_onednn(linear: Any) -> Any:
    """`linear`'s weight reordered for oneDNN's matmul, for up to 8 rows a call (False where that does not
    apply: not an fp32 or bf16 CPU weight of a plain Linear, or torch built without oneDNN). It is a copy:
    built once per backend, whose model's weights do not change while it decodes."""
    weight = getattr(linear, "weight", None)
    if (
        type(linear) is not torch.nn.Linear
        or not isinstance(weight, torch.Tensor)
        or weight.device.type != "cpu"
        or weight.dtype not in (torch.float32, torch.bfloat16)
        or not torch.backends.mkldnn.is_available()
    ):
        return False
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 8)


KERNEL_ROWS = (1, 4)  # the rows `_plan_kernels` times: one (a lone stream's step) and several


def _plan_kernels(linears: list[Any], repeats: int = 3) -> dict[int, tuple[Any, bool, bool]]:
    """For each Linear of a decode step: its weight reordered for oneDNN and whether that path is the
    faster for one row and for several (`CausalBackend._linear`), timed here on the model's own weights;
    Linears where torch's default path wins both ways are left out (no copy kept).

    Why time it: which kernel wins depends on the CPU. torch's default CPU Linear is MKL's sgemm/sgemv,
    whose fast paths are Intel's. On the machine of 2026-11-27/28 (CPU model not recorded) MKL was the
    faster for one row (115 against 143 µs for SmolLM2's 1536 × 576) and oneDNN for several (the 49,152
    × 576 output layer, 8 rows: 4.9 against 12.9 ms); on an AMD EPYC (Zen 4) on 2026-11-28 oneDNN was
    about twice as fast for one row as well (168 against 355 µs; README "Measured · Engine"). Each shape
    is timed over all its layers' weights in turn, so the weights come
    from memory as they do while decoding, best of `repeats`; about 0.1 s per shape."""
    groups: dict[tuple[int, int, torch.dtype], list[Any]] = {}
    for module in linears:
        if type(module) is torch.nn.Linear:
            key = (module.out_features, module.in_features, module.weight.dtype)
            groups.setdefault(key, []).append(module)
    plan: dict[int, tuple[Any, bool, bool]] = {}
    for (_, width, dtype), group in groups.items():
        packed = [_pack_for_onednn(m) for m in group]
        if any(p is False for p in packed):
            continue
        wins = [
            _onednn_faster(group, packed, torch.randn(1, rows, width).to(dtype), repeats)
            for rows in KERNEL_ROWS
        ]
        if any(wins):
            for module, weight in zip(group, packed, strict=True):
                plan[id(module)] = (weight, wins[0], wins[1])
    return plan


def _onednn_faster(group: list[Any], packed: list[Any], x: torch.Tensor, repeats: int) -> bool:
    """Whether `x` through every Linear of `group` in turn is faster by oneDNN (`packed` weights) than by
    torch's default path: best of `repeats` alternated rounds, after one to warm up."""
    import time

    best = [float("inf"), float("inf")]
    for _ in range(repeats + 1):
        start = time.perf_counter()
        for module in group:
            module(x)
        best[0] = min(best[0], time.perf_counter() - start)
        start = time.perf_counter()
        for module, weight in zip(group, packed, strict=True):
            torch.ops.mkldnn._linear_pointwise(x, weight, module.bias, "none", [], "")
        best[1] = min(best[1], time.perf_counter() - start)
    return best[1] < best[0]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotary embeddings' half rotation (transformers' `rotate_half`)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class CharRNNBackend(StepBackend):
    """The char-RNN: characters are tokens, the recurrent state is the cache ((layers, B, C) tensors)."""

    EOS = 2  # CharVocab's <eos>

    def __init__(self, model: Any, vocab: Any) -> None:
        self.model, self.vocab = model, vocab
        self.eos_ids = {self.EOS}

    def encode(self, text: str) -> list[int]:
        return self.vocab.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.vocab.decode(ids)

    def prefill(self, ids: list[int]) -> tuple[torch.Tensor, Any]:
        logits, state = self.model(torch.tensor([ids or [self.EOS]]))
        return logits[:, -1].float(), state

    def step(self, state: Any, tokens: torch.Tensor) -> tuple[torch.Tensor, Any]:
        logits, state = self.model(tokens[:, None], state)
        return logits[:, -1].float(), state

    def select(self, state: Any, rows: list[int]) -> Any:
        index = torch.tensor(rows)
        if isinstance(state, tuple):  # LSTM: (h, c)
            return tuple(s[:, index] for s in state)
        return state[:, index]

    def merge(self, state: Any, other: Any) -> Any:
        if isinstance(state, tuple):
            return tuple(torch.cat([a, b], dim=1) for a, b in zip(state, other, strict=True))
        return torch.cat([state, other], dim=1)


class WholeBackend:
    """An encoder-decoder decoded a request at a time by its family's greedy or beam search."""

    def __init__(self, run: Callable[[str, int, int], str], count: Callable[[str], int]) -> None:
        self.run, self.count = run, count


# -- requests ---------------------------------------------------------------------------------------------
def _seed_of(seed: int, index: int) -> int:
    """Choice `index`'s generator seed: choice 0 uses the request's seed as given."""
    return seed if index == 0 else (seed * 0x9E3779B1 + index * 0x85EBCA6B) % (2**63)


@dataclass
class _Choice:
    """One choice of a request while it decodes."""

    stream: Stream
    index: int
    generator: torch.Generator | None
    ids: list[int] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    text: str = ""  # the choice's text so far, cut at a stop once one is found
    sent: int = 0  # characters of `text` already delivered
    last: int = 0  # the token to feed next step
    finish: str | None = None
    draft_size: int = 2  # prompt lookup: draft tokens to propose next (grows while drafts are accepted)
    # the final-norm hidden state (C,) of the position whose argmax was `last`: the draft heads' input
    hidden: torch.Tensor | None = None


class Stream:
    """A submitted request: its events in order, cancellation, and its completions."""

    def __init__(
        self, prompt_ids: list[int], params: DecodeParams, listener: Callable[[Event], None] | None
    ) -> None:
        self.prompt_ids = prompt_ids
        self.params = params
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = 0
        self.prompt_text = ""
        self._listener = listener
        self._queue: queue.Queue[Event] = queue.Queue()
        self._cancelled = threading.Event()
        self._done = threading.Event()
        self.completions: list[Completion | None] = [None] * params.n
        self.submitted = time.perf_counter()
        self.first_token_at: float | None = None
        self.error: str | None = None  # what went wrong when a choice ends with "error"

    def emit(self, event: Event) -> None:
        self.completion_tokens += len(event.token_ids)
        if self.first_token_at is None and event.token_ids:
            self.first_token_at = time.perf_counter()
        if self._listener is not None:
            self._listener(event)
        else:
            self._queue.put(event)

    def finish(self, index: int, completion: Completion) -> None:
        self.completions[index] = completion
        if all(c is not None for c in self.completions):
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Free the request's rows at the next step; unfinished choices end with "cancelled"."""
        self._cancelled.set()

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """The events of every choice, in order, until all have finished (no listener given)."""
        finished = 0
        while finished < self.params.n:
            try:
                event = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no event within {timeout} s") from None
            finished += event.finish_reason is not None
            yield event

    def result(self, timeout: float | None = None) -> list[Completion]:
        """The finished choices (blocks until the request is done)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"request not done within {timeout} s")
        return [c for c in self.completions if c is not None]


# -- the engine -------------------------------------------------------------------------------------------
class Engine:
    """Continuous-batching decoder over one loaded model; `submit` is thread-safe."""

    def __init__(
        self,
        backend: StepBackend | WholeBackend,
        tokenizer: Any,
        *,
        name: str,
        model: Any = None,
        family: str = "hf-causal",
        card: dict[str, Any] | None = None,
        max_batch: int = 8,
        prompt_lookup: int = PROMPT_LOOKUP,
    ) -> None:
        self.backend = backend
        self.tokenizer = tokenizer
        self.name = name
        self.model = model
        self.family = family
        self.card = card
        self.fim: dict[str, Any] | None = (card or {}).get("fim")
        self.max_batch = max_batch
        self.prompt_lookup = prompt_lookup  # most draft tokens per speculative step; 0 = off
        # steps: forward passes of the running batch; drafted / accepted: prompt-lookup draft tokens
        # proposed and found equal to the model's own choice.
        self.stats: dict[str, int] = {
            "running": 0,
            "waiting": 0,
            "steps": 0,
            "tokens_generated": 0,
            "drafted": 0,
            "accepted": 0,
        }
        self._waiting: list[Stream] = []
        self._choices: list[_Choice] = []  # the running rows, in batch order
        self._state: Any = None
        self._lock = threading.Lock()  # guards _waiting
        self._step_lock = threading.Lock()  # one thread decodes at a time
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- loading ------------------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        ref: str,
        *,
        dtype: str = "auto",
        max_batch: int = 8,
        threads: int | None = None,
        prompt_lookup: int | None = None,
        draft_heads: str | Path | None = None,
    ) -> Engine:
        """An engine over any model reference (see the module docstring); loads offline. `prompt_lookup`:
        the most draft tokens a lone greedy request verifies per step (0 = off; `Engine._speculate`);
        default PROMPT_LOOKUP, 0 for int8. `draft_heads`: `generate.draft` heads made for this model (a
        directory, or the name of heads pycodegen ships), whose guesses a lone greedy request verifies
        when prompt lookup finds nothing; default (None) and "none": off."""
        from pycodegen.zoo import checkpoint_card, load_causal_lm, materialize, model_path, resolve_model

        if threads:
            torch.set_num_threads(threads)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        concrete = pick_dtype(dtype, device)
        if prompt_lookup is None:
            prompt_lookup = 0 if concrete == "int8" else PROMPT_LOOKUP
        path = model_path(ref)  # a shipped zoo checkpoint loads as its directory
        card = checkpoint_card(path) if path.is_dir() else None
        if card is not None and card["family"] != "hf-causal":
            from pycodegen.models.checkpoint import load_checkpoint

            family, model = load_checkpoint(path)
            return cls.for_family(
                family, model, name=ref, card=card, max_batch=max_batch, prompt_lookup=prompt_lookup
            )
        if card is None and path.is_dir() and _is_encoder_decoder(path):
            return cls._hf_seq2seq(ref, materialize(resolve_model(ref)), max_batch)
        model, tokenizer = load_causal_lm(ref)
        model = _to_dtype(model, concrete, device)
        engine = cls.for_model(
            model, tokenizer, name=ref, card=card, max_batch=max_batch, prompt_lookup=prompt_lookup
        )
        from pycodegen.generate.draft import resolve_heads

        heads = resolve_heads(draft_heads)
        if heads is not None:
            engine.use_draft_heads(heads, concrete)
        return engine

    def use_draft_heads(self, path: Path, dtype: str = "fp32") -> None:
        """Decode a lone greedy request with the draft heads in `path` (generate.draft)."""
        from pycodegen.generate.draft import Drafter, DraftHeadsError, load_heads

        backend = self.backend
        if not isinstance(backend, CausalBackend) or not backend.lean:
            raise DraftHeadsError(
                "draft heads need a Llama-architecture model decoded by the engine's own step; "
                f"{self.name} is not"
            )
        if dtype == "int8":  # one activation scale per pass: verifying guesses would change the text
            raise DraftHeadsError(
                "draft heads need --dtype fp32 or bf16, not int8 (whose text they would change)"
            )
        heads, _ = load_heads(path, self.model)
        backend.drafter = Drafter(heads, self.model)

    @classmethod
    def load_started(cls, ref: str, **options: Any) -> Engine:
        """`load` and `start` in one: a background thread loads the model and then decodes, so that it is
        the only thread that ever ran torch's parallel kernels (the server's main thread runs none).

        Why: torch's CPU kernels run on OpenMP (libgomp here), and each thread that calls them gets its own
        team of workers. Once two threads have teams, there are more OpenMP threads than cores and libgomp
        stops spinning between parallel regions, so every small kernel pays a wake-up: measured here, a
        576×1536 int8 Linear took 98 µs a call in a thread after the main thread had loaded the model,
        and 32 µs when the same thread loaded and ran it (server, int8, 2 threads: 27 → 53 tok/s single
        stream; README "Serving"). `options` are `load`'s."""
        box: dict[str, Any] = {}
        ready = threading.Event()

        def run() -> None:
            try:
                engine = cls.load(ref, **options)
            except BaseException as exc:  # handed to the caller, raised there
                box["error"] = exc
                ready.set()
                return
            engine._thread = threading.current_thread()
            box["engine"] = engine
            ready.set()
            engine._loop()

        threading.Thread(target=run, name="pycodegen-engine", daemon=True).start()
        ready.wait()
        if "error" in box:
            raise box["error"]
        return box["engine"]

    @classmethod
    def for_model(
        cls,
        model: Any,
        tokenizer: Any,
        *,
        name: str = "model",
        card: dict[str, Any] | None = None,
        max_batch: int = 8,
        prompt_lookup: int = PROMPT_LOOKUP,
    ) -> Engine:
        """An engine over an HF causal model in memory (a loaded checkpoint, a training run's model, a
        test's)."""
        return cls(
            CausalBackend(model, tokenizer),
            tokenizer,
            name=name,
            model=model,
            card=card,
            max_batch=max_batch,
            prompt_lookup=prompt_lookup,
        )

    @classmethod
    def for_family(
        cls,
        family: Any,
        model: Any,
        *,
        name: str = "model",
        card: dict[str, Any] | None = None,
        max_batch: int = 8,
        prompt_lookup: int = PROMPT_LOOKUP,
    ) -> Engine:
        """An engine over a pycodegen family's model (a loaded checkpoint, or the model being trained)."""
        kind = family.name
        if kind == "hf-causal":
            backend: StepBackend | WholeBackend = CausalBackend(model, family.tokenizer)
            tokenizer = family.tokenizer
        elif kind == "char-rnn":
            backend, tokenizer = CharRNNBackend(model, family.vocab), family.vocab
        elif kind in ("seq2seq", "hf-seq2seq"):
            tokenizer = family.tokenizer

            def run(prompt: str, max_new_tokens: int, beams: int) -> str:
                return family.generate(model, [prompt], max_new_tokens, beams=beams)[0]

            backend = WholeBackend(
                run, lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
            )
        else:
            raise EngineError(f"{name} is a {kind} model: it does not generate text")
        return cls(
            backend,
            tokenizer,
            name=name,
            model=model,
            family=kind,
            card=card,
            max_batch=max_batch,
            prompt_lookup=prompt_lookup,
        )

    @classmethod
    def _hf_seq2seq(cls, ref: str, directory: Path, max_batch: int) -> Engine:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForSeq2SeqLM.from_pretrained(directory).eval()

        @torch.no_grad()
        def run(prompt: str, max_new_tokens: int, beams: int) -> str:
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
            out = model.generate(
                input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False, num_beams=beams
            )
            return tokenizer.decode(out[0], skip_special_tokens=True)

        backend = WholeBackend(run, lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]))
        return cls(backend, tokenizer, name=ref, model=model, family="hf-seq2seq", max_batch=max_batch)

    # -- prompts ------------------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        if isinstance(self.backend, WholeBackend):
            return self.backend.count(text)
        return len(self.backend.encode(text))

    def format_prompt(self, text: str, mode: str = "auto") -> str:
        """The text the model sees for a user prompt (prompt modes: raw, chat, hust, auto)."""
        from pycodegen.generate.decoding import format_prompt

        return format_prompt(self.tokenizer, text, self.prompt_mode(mode))

    def prompt_mode(self, mode: str = "auto") -> str:
        """The concrete prompt mode for `mode` (auto: the checkpoint's, else chat if templated, else raw)."""
        from pycodegen.generate.decoding import resolve_prompt_mode

        if self.family == "char-rnn":  # characters in, characters out: no templates
            if mode not in ("auto", "raw"):
                raise EngineError(f"a char-rnn model takes raw prompts, not prompt mode {mode!r}")
            return "raw"
        return resolve_prompt_mode(self.tokenizer, mode, self.name)

    def fim_prompt(self, prefix: str, suffix: str, mode: str = "psm") -> str:
        """The fill-in-the-middle prompt (PSM or SPM) for a model trained for it: its checkpoint card's FIM
        record, or a tokenizer with StarCoder's sentinels (`generate.fim`); FimUnsupported otherwise."""
        try:
            from pycodegen.generate import fim  # type: ignore[attr-defined]
        except ImportError:  # a pycodegen without FIM prompts: no model here does FIM
            raise FimUnsupported("this model was not trained for fill-in-the-middle") from None
        source = self.card if self.card is not None and self.card.get("fim") else self.tokenizer
        if isinstance(self.backend, CharRNNBackend):
            source = None  # characters: no sentinel tokens
        try:
            return fim.fim_prompt(source, prefix, suffix, mode)
        except fim.FimUnsupported as exc:  # one exception class for callers: the engine's
            raise FimUnsupported(str(exc)) from None

    # -- requests -----------------------------------------------------------------------------------------
    def submit(
        self, prompt: str, params: DecodeParams, listener: Callable[[Event], None] | None = None
    ) -> Stream:
        """Queue a request (thread-safe); it joins the running batch at the next step."""
        self._validate(params)
        if isinstance(self.backend, WholeBackend):
            ids: list[int] = []
            count = self.backend.count(prompt)
        else:
            ids = self.backend.encode(prompt)
            count = len(ids)
            limit = self.backend.max_len
            if limit is not None and count >= limit:
                raise EngineError(
                    f"the prompt is {count} tokens; {self.name} reads at most {limit} (prompt and completion)"
                )
        stream = Stream(ids, params, listener)
        stream.prompt_tokens = count
        stream.prompt_text = prompt
        with self._lock:
            self._waiting.append(stream)
            self.stats["waiting"] = len(self._waiting)
        self._wake.set()
        return stream

    @property
    def supports_logprobs(self) -> bool:
        """Whether the model decodes step by step (and so can report token log-probabilities)."""
        return not isinstance(self.backend, WholeBackend)

    def _validate(self, p: DecodeParams) -> None:
        if p.max_new_tokens < 1 or p.n < 1 or p.beams < 1:
            raise EngineError("max_new_tokens, n and beams must be at least 1")
        if p.temperature < 0 or not 0 < p.top_p <= 1 or p.top_k < 0:
            raise EngineError("temperature must be >= 0, top_p in (0, 1], top_k >= 0")
        if p.logprobs is not None and p.logprobs < 0:
            raise EngineError("logprobs must be >= 0")
        if isinstance(self.backend, WholeBackend):
            if p.temperature > 0 or p.n > 1 or p.logprobs is not None:
                raise EngineError(
                    f"{self.family} models decode greedily or by beam search: temperature 0, n 1, no logprobs"
                )
        elif p.beams > 1:
            raise EngineError("beam search is for the encoder-decoders (seq2seq, hf-seq2seq); use beams 1")

    def generate(self, prompts: list[str], params: DecodeParams) -> list[list[Completion]]:
        """Blocking: `params.n` completions per (already formatted) prompt, decoded together."""
        streams = [self.submit(p, params) for p in prompts]
        if self._thread is None:
            self.run_until(lambda: all(s.done for s in streams))
        return [s.result() for s in streams]

    def run_until(self, done: Callable[[], bool]) -> None:
        """Decode in the calling thread until `done()` (the blocking path when no thread is started)."""
        while not done():
            if not self.step():
                time.sleep(0.001)

    def start(self) -> None:
        """Decode in a background thread until `stop`."""
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="pycodegen-engine", daemon=True)
        self._thread.start()

    def stop(self, drain: bool = True) -> None:
        """Stop the background thread: after finishing every request (`drain`), or cancelling them."""
        if not drain:
            with self._lock:
                pending = [*self._waiting, *{c.stream for c in self._choices}]
            for stream in pending:
                stream.cancel()
        if self._thread is not None:
            if drain:
                while self._waiting or self._choices:
                    time.sleep(0.01)
            self._stopping = True
            self._wake.set()
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while not self._stopping:
            try:
                busy = self.step()
            except Exception as exc:  # outside the model's step (sampling, delivery): end the batch, live on
                with self._step_lock:
                    for choice in self._choices:
                        choice.text = f"{type(exc).__name__}: {exc}"
                        self._end(choice, "error")
                    self._choices, self._state = [], None
                    self.stats["running"] = 0
                busy = True
            if not busy:
                self._wake.wait(0.05)
                self._wake.clear()

    # -- one step -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> bool:
        """Admit waiting requests, drop cancelled rows, decode one token for every running row; False when
        there was nothing to do."""
        with self._step_lock:
            self._drop_cancelled()
            admitted = self._admit()
            if not self._choices:
                return admitted
            backend = self.backend
            assert isinstance(backend, StepBackend)
            draft = self._draft()
            try:
                if draft:
                    self._speculate(draft)
                else:
                    tokens = torch.tensor([c.last for c in self._choices])
                    logits, self._state = backend.step(self._state, tokens)
                    self._advance(logits, self._choices)
                    self._guess(-1)
            except (
                Exception
            ) as exc:  # the batch's state is lost: its requests end with "error", the engine lives
                for choice in self._choices:
                    if choice.finish is None:
                        choice.text = f"{type(exc).__name__}: {exc}"
                        self._end(choice, "error")
                self._choices, self._state = [], None
                self.stats["running"] = 0
                return True
            self.stats["steps"] += 1
            self._drop_finished()
            return True

    # -- prompt-lookup speculative decoding ---------------------------------------------------------------
    # Decoding one row is bound by reading the weights once per token (README "Measured · Engine"), and
    # verifying K+1 tokens in one forward pass reads them once too. A lone greedy row drafts the tokens
    # that followed the last earlier occurrence of its latest n-gram (Saxena 2023, "prompt lookup
    # decoding"; transformers' `prompt_lookup_num_tokens`, llama.cpp's lookup decoding), verifies its last
    # token and the draft in one pass, and keeps the drafts equal to the model's own argmax plus the
    # model's token after them: the greedy text step-by-step decoding gives (up to float ties: K+1 rows
    # through a matmul may round differently from one), in fewer weight reads. Only one greedy row:
    # batched rows already share each weight read, and rows accepting different counts would leave holes
    # in the shared left-padded cache; sampled rows would need rejection sampling to keep their
    # distribution and their seeded text.
    def _draft(self) -> list[int]:
        """The draft tokens for this step (empty: a plain step)."""
        if len(self._choices) != 1:
            return []
        backend = self.backend
        assert isinstance(backend, StepBackend)
        choice = self._choices[0]
        if choice.generator is not None or not backend.speculative:
            return []
        stream = choice.stream
        # A draft token is only worth verifying if its choice can still take it and one more token (the
        # model's own after the draft), and no position may pass the model's context.
        room = stream.params.max_new_tokens - len(choice.ids) - 1
        if backend.max_len is not None:
            room = min(room, backend.max_len - stream.prompt_tokens - len(choice.ids) - 1)
        lookup = min(room, self.prompt_lookup, choice.draft_size)
        if lookup > 0:
            # with the heads' guesses at hand, a lone repeated token is too weak a match to prefer
            shortest = LOOKUP_SHORTEST_WITH_HEADS if choice.hidden is not None else 1
            draft = lookup_draft([*stream.prompt_ids, *choice.ids], lookup, shortest=shortest)
            if draft:
                return draft
        # Nothing to look up: the draft heads' guesses, where the model has them (generate.draft); drawn
        # only here, so a pass whose draft came from the prompt costs no heads
        if choice.hidden is None or room <= 0:
            return []
        return backend.drafter.draft(choice.hidden)[:room]  # type: ignore[attr-defined]

    def _speculate(self, draft: list[int]) -> None:
        """Verify the one running row's last token + `draft` in one forward pass and deliver the tokens
        greedy decoding would have chosen, one by one (stops and limits apply mid-draft)."""
        backend = self.backend
        assert isinstance(backend, StepBackend)
        choice = self._choices[0]
        tokens = torch.tensor([[choice.last, *draft]])  # (1, 1 + K)
        logits, self._state = backend.extend(self._state, tokens)
        logits = logits[0]  # (1 + K, V): position i predicts the token after draft[:i]
        greedy = logits.argmax(-1).tolist()
        accepted = 0
        while accepted < len(draft) and draft[accepted] == greedy[accepted]:
            accepted += 1
        self.stats["drafted"] += len(draft)
        self.stats["accepted"] += accepted
        # Each draft token costs a row of the verification pass whether or not it is accepted, so the draft
        # grows while drafts are accepted whole and shrinks when one is rejected (transformers' schedule
        # for assistant models).
        choice.draft_size = max(1, choice.draft_size + 2 if accepted == len(draft) else choice.draft_size - 1)
        logp = torch.log_softmax(logits, -1) if choice.stream.params.logprobs is not None else None
        for i in range(accepted + 1):  # the accepted drafts, then the model's own next token
            self._take(choice, greedy[i], None if logp is None else logp[i])
            if choice.finish is not None:
                return  # the row is dropped with its state
        self._guess(accepted)
        # Drafts after the first rejected one were fed but are not the row's text: take them back.
        self._state = backend.crop(self._state, len(draft) - accepted)

    def _guess(self, position: int) -> None:
        """After a pass: keep, for a lone greedy row's next draft, the hidden state at `position` of the
        pass (the one whose argmax the row just took); none for batched rows."""
        backend = self.backend
        if getattr(backend, "drafter", None) is None:
            return
        if len(self._choices) != 1 or self._choices[0].generator is not None:
            for choice in self._choices:
                choice.hidden = None
            return
        choice = self._choices[0]
        hidden = backend.last_hidden  # type: ignore[union-attr]
        if choice.finish is None and hidden is not None:
            choice.hidden = hidden[0, position]

    def _drop_cancelled(self) -> None:
        with self._lock:
            gone = [s for s in self._waiting if s.cancelled]
            self._waiting = [s for s in self._waiting if not s.cancelled]
            self.stats["waiting"] = len(self._waiting)
        for stream in gone:
            for i in range(stream.params.n):
                self._end(_Choice(stream, i, None), "cancelled")
        for choice in self._choices:
            if choice.stream.cancelled and choice.finish is None:
                self._end(choice, "cancelled")
        self._drop_finished()

    def _admit(self) -> bool:
        """Prefill waiting requests while their choices fit in the batch (a request bigger than the batch
        runs when the batch is empty)."""
        admitted = False
        while True:
            with self._lock:
                if not self._waiting:
                    break
                stream = self._waiting[0]
                if self._choices and len(self._choices) + stream.params.n > self.max_batch:
                    break
                self._waiting.pop(0)
                self.stats["waiting"] = len(self._waiting)
            admitted = True
            try:
                if isinstance(self.backend, WholeBackend):
                    self._run_whole(stream)
                else:
                    self._prefill(stream)
            except Exception as exc:  # a failing request ends with "error"; the others go on
                for i in range(stream.params.n):
                    if stream.completions[i] is None:
                        self._end(_Choice(stream, i, None, text=f"{type(exc).__name__}: {exc}"), "error")
        self.stats["running"] = len(self._choices)
        return admitted

    def _prefill(self, stream: Stream) -> None:
        backend = self.backend
        assert isinstance(backend, StepBackend)
        p = stream.params
        logits, state = backend.prefill(stream.prompt_ids)
        seed = p.seed if p.seed is not None else int.from_bytes(os.urandom(6), "little")
        choices = []
        for i in range(p.n):
            generator = None
            if p.temperature > 0:
                generator = torch.Generator(device=logits.device).manual_seed(_seed_of(seed, i))
            choices.append(_Choice(stream, i, generator))
        self._advance(logits.expand(p.n, -1), choices)
        alive = [i for i, c in enumerate(choices) if c.finish is None]
        if not alive:
            return
        state = backend.select(state, [0] * len(alive))
        self._state = state if not self._choices else backend.merge(self._state, state)
        self._choices += [choices[i] for i in alive]

    def _run_whole(self, stream: Stream) -> None:
        backend = self.backend
        assert isinstance(backend, WholeBackend)
        p = stream.params
        text = backend.run(stream.prompt_text, p.max_new_tokens, p.beams)
        choice = _Choice(stream, 0, None)
        cut = _find_stop(text, p.stop, 0)
        reason = "stop"
        if cut is not None:
            text = text[:cut]
        elif backend.count(text) >= p.max_new_tokens:
            reason = "length"
        choice.text = text
        stream.completion_tokens = backend.count(text)
        self._end(choice, reason)

    def _advance(self, logits: torch.Tensor, choices: list[_Choice]) -> None:
        """Choose each row's next token from its logits (B, V), record it, deliver the new text."""
        greedy = logits.argmax(-1).tolist()
        want_logprobs = any(c.stream.params.logprobs is not None for c in choices)
        logp = torch.log_softmax(logits, -1) if want_logprobs else None
        for row, choice in enumerate(choices):
            p = choice.stream.params
            token = greedy[row] if choice.generator is None else _sample(logits[row], p, choice.generator)
            self._take(choice, token, None if logp is None else logp[row])

    def _take(self, choice: _Choice, token: int, logp: torch.Tensor | None) -> None:
        """Record a row's chosen token (with its log-probabilities (V,) when asked) and deliver it."""
        choice.last = token
        k = choice.stream.params.logprobs
        entry = self._logprob_entry(logp, token, k) if logp is not None and k is not None else None
        self.stats["tokens_generated"] += 1
        self._deliver(choice, token, entry)

    def _logprob_entry(self, logp: torch.Tensor, token: int, k: int) -> dict[str, Any]:
        backend = self.backend
        assert isinstance(backend, StepBackend)
        top: dict[str, float] = {}
        if k > 0:
            values, indices = logp.topk(k)
            top = {backend.decode([int(i)]): float(v) for v, i in zip(values, indices, strict=True)}
        return {"token": backend.decode([token]), "logprob": float(logp[token]), "top": top}

    def _deliver(self, choice: _Choice, token: int, entry: dict[str, Any] | None) -> None:
        """Stops, the end of the choice, and the text safe to send (not a possible stop's beginning, not a
        half-decoded character)."""
        backend = self.backend
        assert isinstance(backend, StepBackend)
        p = choice.stream.params
        finish = None
        if token in backend.eos_ids and not p.ignore_eos:
            finish = "stop"  # the end-of-sequence token is not part of the completion
        else:
            choice.ids.append(token)
            if entry is not None:
                choice.logprobs.append(entry)
        previous = choice.text
        text = backend.decode(choice.ids)
        longest = max((len(s) for s in p.stop), default=0)
        cut = _find_stop(text, p.stop, max(0, len(previous) - longest))
        if cut is not None:
            text, finish = text[:cut], "stop"
        elif p.stop_after_code_block and "`" in text[max(0, len(previous) - 3) :]:
            end = code_block_end(text)
            if end is not None:
                text, finish = text[:end], "stop"
        if finish is None and len(choice.ids) >= p.max_new_tokens:
            finish = "length"
        limit = backend.max_len
        if finish is None and limit is not None and choice.stream.prompt_tokens + len(choice.ids) >= limit:
            finish = "length"  # the model's context is full
        choice.text = text
        if finish is not None:
            self._end(choice, finish, token, entry)
            return
        # One event per token (a streaming client and logprobs need each), its text possibly empty.
        safe = max(choice.sent, len(text) - _held_back(text, p.stop))
        choice.stream.emit(
            Event(choice.index, text[choice.sent : safe], [token], [entry] if entry else None, None)
        )
        choice.sent = safe

    def _end(self, choice: _Choice, reason: str, token: int | None = None, entry: Any = None) -> None:
        """The choice's last event (the rest of its text) and its completion."""
        choice.finish = reason
        stream = choice.stream
        if reason == "error":
            stream.error = choice.text
        tail = choice.text[choice.sent :] if reason != "error" else ""
        ids = [token] if token is not None else []  # the EOS token counts as generated, as in usage
        stream.emit(Event(choice.index, tail, ids, [entry] if entry is not None else None, reason))
        choice.sent = len(choice.text)
        completion = Completion(
            text="" if reason == "error" else choice.text,
            token_ids=list(choice.ids),
            logprobs=list(choice.logprobs) if stream.params.logprobs is not None else None,
            finish_reason=reason,
        )
        stream.finish(choice.index, completion)

    def _drop_finished(self) -> None:
        keep = [i for i, c in enumerate(self._choices) if c.finish is None]
        if len(keep) == len(self._choices):
            return
        if keep:
            backend = self.backend
            assert isinstance(backend, StepBackend)
            self._state = backend.select(self._state, keep)
        else:
            self._state = None
        self._choices = [self._choices[i] for i in keep]
        self.stats["running"] = len(self._choices)


def _sample(logits: torch.Tensor, p: DecodeParams, generator: torch.Generator) -> int:
    """One token drawn from temperature-scaled logits (V,) after top-k and top-p filtering."""
    x = logits / p.temperature
    if p.top_k and p.top_k < x.shape[-1]:
        kth = torch.topk(x, p.top_k).values[-1]
        x = x.masked_fill(x < kth, float("-inf"))
    if p.top_p < 1.0:
        ordered, order = torch.sort(x, descending=True)
        probs = torch.softmax(ordered, -1)
        # Drop the tokens after the first whose cumulative mass reaches top_p (the top token stays).
        outside = probs.cumsum(-1) - probs >= p.top_p
        x = x.index_put((order[outside],), torch.tensor(float("-inf")))
    probs = torch.softmax(x, -1)
    return int(torch.multinomial(probs, 1, generator=generator))


def lookup_draft(history: list[int], size: int, ngram: int = 3, shortest: int = 1) -> list[int]:
    """Up to `size` tokens that followed the most recent earlier occurrence of the last n-gram of
    `history` (n = `ngram`, then shorter down to `shortest`; prompt lookup decoding). The most recent
    occurrence, not the first as transformers' `PromptLookupCandidateGenerator` takes: code repeats what
    it just wrote.

    >>> lookup_draft([1, 2, 3, 9, 1, 2, 3], 2)
    [9, 1]
    >>> lookup_draft([5, 6, 7], 4)
    []
    """
    end = len(history)
    for n in range(min(ngram, end - 1), shortest - 1, -1):
        tail = history[end - n :]
        for start in range(end - n - 1, -1, -1):  # an occurrence that ends before the tail does
            if history[start : start + n] == tail:
                return history[start + n : start + n + size]
    return []


def _find_stop(text: str, stops: list[str], start: int) -> int | None:
    """Where the earliest stop string begins in `text` (searching from `start`), or None."""
    found = [i for i in (text.find(s, start) for s in stops if s) if i >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters must wait: a half-decoded character, or the beginning of a stop."""
    hold = 0
    if text.endswith("\ufffd"):
        hold = len(text) - len(text.rstrip("\ufffd"))
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:k]):
                hold = k
                break
    return hold


def _is_encoder_decoder(directory: Path) -> bool:
    import json

    config = directory / "config.json"
    if not config.is_file():
        return False
    with contextlib.suppress(json.JSONDecodeError, OSError):
        return bool(json.loads(config.read_text(encoding="utf-8")).get("is_encoder_decoder"))
    return False


def _to_dtype(model: Any, dtype: str, device: torch.device) -> Any:
    """The model on `device` in the engine's dtype: bf16 weights, or int8 dynamic quantization of every
    Linear layer (CPU; the embedding stays fp32)."""
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    elif dtype == "int8":
        if device.type != "cpu":
            raise EngineError("dtype int8 (dynamic quantization) runs on CPU only")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's deprecation notice
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    if device.type != "cpu":
        model = model.to(device)
    return model.eval()


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    sampling: Any,
    stops: Sequence[str] = (),
    stop_after_code_block: bool = False,
) -> list[list[str]]:
    """`sampling.n` completions (text, cut at stops) for each formatted prompt of an HF causal model in
    memory, decoded by the engine (`generate.engine`, the one decoding path); the tokenizer is not
    modified."""
    engine = Engine.for_model(model, tokenizer, max_batch=sampling.batch_size)
    params = decode_params(sampling, list(stops), stop_after_code_block)
    return [[c.text for c in choices] for choices in engine.generate(list(prompts), params)]
