"""Prompt modes and batched decoding with transformers' `generate`.

Prompt modes: `raw` (the text as is, for base models), `chat` (the tokenizer's chat template, for
instruct models such as the embedded SmolLM2-Instruct), `hust` (the HUST instruction template). `auto`
picks `chat` when the tokenizer has a chat template and `raw` otherwise; the choice is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pycodegen.data.tasks import hust_prompt
from pycodegen.errors import ConfigError
from pycodegen.generate.postprocess import code_block_end, truncate

PROMPT_MODES = ("auto", "raw", "chat", "hust")


def resolve_prompt_mode(tokenizer: Any, mode: str) -> str:
    """The concrete prompt mode: `auto` becomes `chat` if the tokenizer has a chat template, else `raw`."""
    if mode not in PROMPT_MODES:
        raise ConfigError(f"unknown prompt mode {mode!r}; valid: {', '.join(PROMPT_MODES)}")
    if mode == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "raw"
    if mode == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ConfigError("prompt mode 'chat' needs a tokenizer with a chat template; use 'raw' or 'hust'")
    return mode


def format_prompt(tokenizer: Any, text: str, mode: str) -> str:
    """The text the model sees for a user prompt under a concrete prompt mode."""
    if mode == "chat":
        messages = [{"role": "user", "content": text}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if mode == "hust":
        return hust_prompt(text)
    return text


@dataclass
class DecodingConfig:
    """How tokens are chosen; temperature 0 means greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int = 0
    batch_size: int = 8

    @classmethod
    def of(cls, sampling: Any) -> DecodingConfig:
        """From a config carrying the sampling fields (pycodegen.config.SamplingConfig)."""
        return cls(
            sampling.max_new_tokens,
            sampling.temperature,
            sampling.top_p,
            sampling.n,
            sampling.seed,
            sampling.batch_size,
        )


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    cfg: DecodingConfig,
    stops: Sequence[str] = (),
    stop_after_code_block: bool = False,
) -> list[list[str]]:
    """`cfg.n` completions (raw decoded text, cut at stops) for each fully formatted prompt, batched.

    `stop_after_code_block` ends a sequence once its first fenced code block has closed: what a chat
    model says after its code is never executed, and generating it costs most of the time.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    torch.manual_seed(cfg.seed)
    sample = cfg.temperature > 0

    class StopOnText(StoppingCriteria):
        def __init__(self, start: int) -> None:
            self.start = start

        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            texts = tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
            done = [
                any(s in t for s in stops) or (stop_after_code_block and code_block_end(t) is not None)
                for t in texts
            ]
            return torch.tensor(done, device=input_ids.device)

    flat = [p for p in prompts for _ in range(cfg.n)]
    outputs: list[str] = []
    for i in range(0, len(flat), cfg.batch_size):
        batch = tokenizer(
            flat[i : i + cfg.batch_size], return_tensors="pt", padding=True, add_special_tokens=False
        )
        start = batch["input_ids"].shape[1]
        kwargs: dict[str, Any] = {
            "max_new_tokens": cfg.max_new_tokens,
            "do_sample": sample,
            "pad_token_id": tokenizer.pad_token_id,
        }
        if sample:
            kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p)
        if stops or stop_after_code_block:
            kwargs["stopping_criteria"] = StoppingCriteriaList([StopOnText(start)])
        with torch.no_grad():
            out = model.generate(**batch, **kwargs)
        texts = tokenizer.batch_decode(out[:, start:], skip_special_tokens=True)
        texts = [truncate(t, list(stops)) for t in texts]
        if stop_after_code_block:
            texts = [t[: code_block_end(t) or len(t)] for t in texts]
        outputs += texts
    return [outputs[j * cfg.n : (j + 1) * cfg.n] for j in range(len(prompts))]
