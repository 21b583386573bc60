"""Prompt modes: how a user prompt becomes the text the model sees (decoding itself is `generate.engine`).

Prompt modes: `raw` (the text as is, for base models), `chat` (the tokenizer's chat template, for
instruct models such as the embedded SmolLM2-Instruct), `hust` (the HUST instruction template). `auto`
picks `chat` when the tokenizer has a chat template and `raw` otherwise; the choice is recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pycodegen.errors import ConfigError, unknown_name
from pycodegen.templates import hust_prompt
from pycodegen.zoo import recorded_prompt_mode


def _chat(tokenizer: Any, text: str) -> str:
    messages = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


# The prompt modes: name → how a user prompt becomes the text the model sees (`auto` resolves to one).
PROMPT_MODES: dict[str, Callable[[Any, str], str] | None] = {
    "auto": None,
    "raw": lambda tokenizer, text: text,  # base models continue the text as it is
    "chat": _chat,  # the tokenizer's chat template (instruct models)
    "hust": lambda tokenizer, text: hust_prompt(text),  # the HUST instruction template
}


def resolve_prompt_mode(tokenizer: Any, mode: str, model_ref: str | None = None) -> str:
    """The concrete prompt mode. `auto` becomes the format a pycodegen checkpoint (`model_ref`) was trained
    with (its card says, e.g. `hust` for HUST-template data), else `chat` if the tokenizer has a chat
    template, else `raw`."""
    if mode not in PROMPT_MODES:
        raise unknown_name("prompt mode", mode, list(PROMPT_MODES))
    if mode == "auto":
        recorded = recorded_prompt_mode(model_ref) if model_ref else None
        if recorded is not None and (recorded != "chat" or getattr(tokenizer, "chat_template", None)):
            return recorded
        return "chat" if getattr(tokenizer, "chat_template", None) else "raw"
    if mode == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ConfigError("prompt mode 'chat' needs a tokenizer with a chat template; use 'raw' or 'hust'")
    return mode


def format_prompt(tokenizer: Any, text: str, mode: str) -> str:
    """The text the model sees for a user prompt under a concrete prompt mode."""
    formatter = PROMPT_MODES.get(mode)
    if formatter is None:
        raise ConfigError(f"prompt mode {mode!r} is not concrete; resolve it first (resolve_prompt_mode)")
    return formatter(tokenizer, text)
