"""Prompt modes and batched decoding with transformers' `generate` (greedy or sampling, stop strings).

Prompt modes: `raw` (the text as is, for base models), `chat` (the tokenizer's chat template, for
instruct models such as the embedded SmolLM2-Instruct), `hust` (the HUST instruction template). `auto`
picks `chat` when the tokenizer has a chat template and `raw` otherwise; the choice is recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pycodegen.errors import ConfigError, unknown_name
from pycodegen.generate.postprocess import code_block_end, truncate
from pycodegen.templates import hust_prompt
from pycodegen.zoo import recorded_prompt_mode

if TYPE_CHECKING:
    import torch

    from pycodegen.config import SamplingConfig


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


def _generated_only(matcher: Any, start: int) -> Any:
    """transformers' stop-string matcher (token-level, no decoding), shown the generated tokens only.

    `generate(stop_strings=..., tokenizer=...)` matches at the end of the whole sequence, prompt
    included, so a stop that straddles the prompt's end (a HumanEval prompt ends in a newline; a model
    that starts by rewriting the function writes "def ", forming the stop "\\ndef ") would end the row
    before it wrote anything. The stops apply to what the model wrote, as in the Codex harness.
    """
    from transformers import StoppingCriteria

    class GeneratedStopStrings(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            return matcher(input_ids[:, start:], scores, **kwargs)

    return GeneratedStopStrings()


def _code_block_criterion(tokenizer: Any, start: int) -> Any:
    """A stopping criterion: a row is done once its first fenced code block has closed.

    This cannot be a plain stop string ("```" also opens the block). It stays cheap: each step decodes
    only the newest token of each row, and only when that token holds a backtick (the only token that
    can complete a closing fence) is the row's generated text decoded and checked.
    """
    import torch
    from transformers import StoppingCriteria

    class CodeBlockClosed(StoppingCriteria):
        def __init__(self) -> None:
            self.closed: set[int] = set()
            self.decodes = 0  # full decodes made, so a test can check the criterion stays cheap

        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            newest = tokenizer.batch_decode(input_ids[:, -1:], skip_special_tokens=True)
            for row, token_text in enumerate(newest):
                if row in self.closed or "`" not in token_text:
                    continue
                self.decodes += 1
                text = tokenizer.decode(input_ids[row, start:], skip_special_tokens=True)
                if code_block_end(text) is not None:
                    self.closed.add(row)
            done = [row in self.closed for row in range(input_ids.shape[0])]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return CodeBlockClosed()


def _left_padded(tokenizer: Any, texts: Sequence[str], pad_id: int) -> dict[str, torch.Tensor]:
    """Token ids left-padded by hand (decoder-only models continue from the right edge), so the
    caller's tokenizer is never mutated: setting `padding_side` on a training tokenizer leaked into
    its saved checkpoints."""
    import torch

    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(ids), width), dtype=torch.long)  # (B, T)
    for row, x in enumerate(ids):
        if x:
            input_ids[row, width - len(x) :] = torch.tensor(x, dtype=torch.long)
            mask[row, width - len(x) :] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    sampling: SamplingConfig,
    stops: Sequence[str] = (),
    stop_after_code_block: bool = False,
) -> list[list[str]]:
    """`sampling.n` completions (raw decoded text, cut at stops) for each fully formatted prompt, batched.

    `stops` end a sequence through transformers' stop-string matcher; `stop_after_code_block` ends it once its
    first fenced code block has closed: what a chat model says after its code is never executed, and
    generating it costs most of the time. The tokenizer is not modified.
    """
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    torch.manual_seed(sampling.seed)
    sample = sampling.temperature > 0
    device = getattr(model, "device", None)
    flat = [p for p in prompts for _ in range(sampling.n)]
    matcher = None
    if stops:  # built once: it indexes the whole vocabulary
        from transformers import StopStringCriteria

        matcher = StopStringCriteria(tokenizer=tokenizer, stop_strings=list(stops))
    outputs: list[str] = []
    for i in range(0, len(flat), sampling.batch_size):
        batch = _left_padded(tokenizer, flat[i : i + sampling.batch_size], pad_id)
        if device is not None:
            batch = {k: v.to(device) for k, v in batch.items()}
        start = batch["input_ids"].shape[1]
        kwargs: dict[str, Any] = {
            "max_new_tokens": sampling.max_new_tokens,
            "do_sample": sample,
            "pad_token_id": pad_id,
        }
        if sample:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p)
        criteria = []
        if matcher is not None:
            criteria.append(_generated_only(matcher, start))
        if stop_after_code_block:
            criteria.append(_code_block_criterion(tokenizer, start))
        if criteria:
            from transformers import StoppingCriteriaList

            kwargs["stopping_criteria"] = StoppingCriteriaList(criteria)
        with torch.no_grad():
            out = model.generate(**batch, **kwargs)
        # A row that stopped early is padded while the others go on; the stop text itself is cut here.
        texts = tokenizer.batch_decode(out[:, start:], skip_special_tokens=True)
        texts = [truncate(t, list(stops)) for t in texts]
        if stop_after_code_block:
            texts = [t[: code_block_end(t) or len(t)] for t in texts]
        outputs += texts
    return [outputs[j * sampling.n : (j + 1) * sampling.n] for j in range(len(prompts))]
