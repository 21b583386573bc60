"""Hugging Face families: `hf-causal` (decoder-only: the embedded SmolLM2, a local GPT-2/Llama-shaped
directory, or a new model from a config) with loss masking of prompt tokens, and its LoRA targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pycodegen.errors import ConfigError
from pycodegen.models.family import Family, pad_field, register
from pycodegen.models.losses import linear_cross_entropy

# Default LoRA target modules by architecture (the HUST system used q, k, v on T5).
LORA_TARGETS = {
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "t5": ["q", "k", "v"],
}
NEW_PREFIX = "new:"
# Architectures whose logits are exactly `lm_head(decoder(...).last_hidden_state)` (no scaling or
# soft-capping), so the loss can be fused with the output layer (pycodegen.models.losses).
FUSED_LOSS_TYPES = {"gpt2", "llama", "mistral", "qwen2", "qwen3", "starcoder2", "gpt_bigcode"}


def pack_windows(examples: list[dict[str, list[int]]], length: int) -> list[dict[str, list[int]]]:
    """Pack short token sequences, in order, into examples of at most `length` tokens.

    >>> ex = [{"input_ids": ids} for ids in ([1, 2, 3, 4], [5, 6], [7], [8, 9, 10])]
    >>> [e["input_ids"] for e in pack_windows(ex, 4)]
    [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10]]
    """
    packed: list[dict[str, list[int]]] = []
    buffer: list[int] = []
    for e in examples:
        ids = e["input_ids"]
        if len(ids) >= length:
            packed.append({"input_ids": ids, "labels": ids})
            continue
        if len(buffer) + len(ids) > length:
            packed.append({"input_ids": buffer, "labels": buffer})
            buffer = []
        buffer = buffer + ids
    if buffer:
        packed.append({"input_ids": buffer, "labels": buffer})
    return packed


def new_causal_lm(model_type: str, tokenizer: Any, args: dict[str, Any]) -> torch.nn.Module:
    """A freshly initialised decoder-only model of an HF architecture, sized by `args`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if model_type not in ("gpt2", "llama"):
        raise ConfigError(f"new models can be of type gpt2 or llama, not {model_type!r}")
    sizes = {
        "gpt2": {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 512},
        "llama": {
            "num_hidden_layers": 2,
            "hidden_size": 64,
            "num_attention_heads": 2,
            "intermediate_size": 128,
            "max_position_embeddings": 512,
        },
    }[model_type]
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **{**sizes, **args},
    )
    return AutoModelForCausalLM.from_config(config)


@register
class HFCausalFamily(Family):
    name = "hf-causal"
    views = ("docstring-to-body", "instruction", "lm-windows")
    generates = True

    def setup(self) -> None:
        from transformers import AutoTokenizer

        ref = self.cfg.model or "smollm2-135m-instruct"
        if ref.startswith(NEW_PREFIX):
            tok_dir = self.data_dir / "tokenizer"
            if not tok_dir.is_dir():
                raise ConfigError(
                    f"a new model needs the dataset's tokenizer: {tok_dir} is missing "
                    "(prepare with --train-tokenizer)"
                )
            self.tokenizer = AutoTokenizer.from_pretrained(tok_dir)
            self.model = new_causal_lm(ref[len(NEW_PREFIX) :], self.tokenizer, self.cfg.model_args)
        else:
            from pycodegen.zoo import load_causal_lm

            quantization = None
            if self.cfg.mode == "qlora":  # 4-bit NF4 weights, bf16 compute (Dettmers et al. 2023)
                from transformers import BitsAndBytesConfig

                quantization = BitsAndBytesConfig(
                    load_in_4bit=True,
                    bnb_4bit_quant_type="nf4",
                    bnb_4bit_compute_dtype=torch.bfloat16,
                    bnb_4bit_use_double_quant=True,
                )
            self.model, self.tokenizer = load_causal_lm(ref, quantization=quantization)
            if self.manifest.get("task") == "lm-windows":
                tok_dir = self.data_dir / "tokenizer"
                data_tok = AutoTokenizer.from_pretrained(tok_dir) if tok_dir.is_dir() else None
                if data_tok is None or len(data_tok) < len(self.tokenizer):
                    raise ConfigError(
                        "lm-windows data for a pre-trained model must be prepared with its "
                        f"tokenizer (--tokenizer {ref})"
                    )
                self.tokenizer = data_tok
                self.model.resize_token_embeddings(len(data_tok))  # the control tokens
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.train()

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def lora_targets(self) -> list[str]:  # type: ignore[override]
        model_type = getattr(getattr(self.model, "config", None), "model_type", "")
        return LORA_TARGETS.get(model_type, LORA_TARGETS["llama"])

    def encode(self, row: dict[str, Any]) -> dict[str, list[int]]:
        if "input_ids" in row:  # lm-windows: every token is a target
            return {"input_ids": row["input_ids"], "labels": row["input_ids"]}
        prompt = self.tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        target = self.tokenizer(row["target"], add_special_tokens=False)["input_ids"] + [
            self.tokenizer.eos_token_id
        ]
        limit = self.cfg.max_length
        ids = (prompt + target)[:limit]
        labels = ([-100] * len(prompt) + target)[:limit]  # no loss on the prompt
        return {"input_ids": ids, "labels": labels}

    def pack(self, examples: list[dict[str, list[int]]]) -> list[dict[str, list[int]]]:
        """LM windows: short windows (whole short files, each ending in EOS) are packed together into
        full-length examples, so batches carry little padding; other views are left as they are."""
        if self.manifest.get("task") != "lm-windows" or not examples:
            return examples
        return pack_windows(examples, max(len(e["input_ids"]) for e in examples))

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy of each token's prediction of the next (HF's causal-LM loss).

        With `fused_loss` (the default) on a supported architecture, the decoder runs alone and the
        output layer and cross-entropy are computed together in chunks, never holding the batch's
        full logits; otherwise the model's own loss."""
        parts = self.fused_parts(model) if self.cfg.fused_loss else None
        if parts is None:
            return model(**batch).loss
        decoder, head = parts
        inputs: dict[str, Any] = {"input_ids": batch["input_ids"], "use_cache": False}
        mask = batch.get("attention_mask")
        if mask is not None and not bool(mask.all()):  # no mask at all lets SDPA take its causal kernel
            inputs["attention_mask"] = mask
        hidden = decoder(**inputs).last_hidden_state
        # token t predicts label t + 1, as in transformers' ForCausalLMLoss
        labels = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=-100)
        return linear_cross_entropy(hidden, head.weight, labels, head.bias)

    @staticmethod
    def fused_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Linear] | None:
        """(decoder, output layer) when the loss can be fused with the output layer, else None."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT
        config = getattr(base, "config", None)
        if getattr(config, "model_type", None) not in FUSED_LOSS_TYPES:
            return None
        head = base.get_output_embeddings()
        if type(head) is not torch.nn.Linear:  # e.g. LoRA on the output layer: the model's own loss
            return None
        return base.get_decoder(), head

    def save(self, model: torch.nn.Module, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    def load_weights(self, model: torch.nn.Module, directory: Path) -> None:
        from safetensors.torch import load_file

        if (directory / "adapter_model.safetensors").is_file():
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model, load_file(str(directory / "adapter_model.safetensors")))
            return
        super().load_weights(model, directory)

    @torch.no_grad()
    def generate(self, model: torch.nn.Module, prompts: list[str], max_new_tokens: int) -> list[str]:
        from pycodegen.generate.decoding import DecodingConfig, generate

        was_training = model.training
        model.eval()
        texts = generate(model, self.tokenizer, prompts, DecodingConfig(max_new_tokens=max_new_tokens))
        model.train(was_training)
        return [t[0] for t in texts]

    def describe(self) -> dict[str, Any]:
        config = getattr(self.model, "config", None)
        return {
            "family": self.name,
            "model": self.cfg.model,
            "model_type": getattr(config, "model_type", None),
        }


@register
class HFSeq2SeqFamily(Family):
    """T5/CodeT5+-shaped encoder-decoders: a local directory, or `new:t5` sized by model_args.

    The HUST setting (decoder frozen except cross-attention) is `freeze: ["^decoder\\\\."]` with
    `unfreeze: ["EncDecAttention"]`.
    """

    name = "hf-seq2seq"
    views = ("docstring-to-body", "instruction")
    generates = True

    def setup(self) -> None:
        from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

        ref = self.cfg.model
        if ref is None:
            raise ConfigError("hf-seq2seq needs --model: a local T5/CodeT5+ directory or new:t5")
        if ref.startswith(NEW_PREFIX):
            if ref != "new:t5":
                raise ConfigError(f"new encoder-decoders can be new:t5, not {ref!r}")
            self.tokenizer = AutoTokenizer.from_pretrained(self.data_dir / "tokenizer")
            sizes = {"d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_heads": 4}
            config = AutoConfig.for_model(
                "t5",
                vocab_size=len(self.tokenizer),
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                decoder_start_token_id=self.tokenizer.pad_token_id,
                **{**sizes, **self.cfg.model_args},
            )
            self.model = AutoModelForSeq2SeqLM.from_config(config)
        else:
            from pycodegen.zoo import materialize, resolve_model

            directory = materialize(resolve_model(ref))
            self.tokenizer = AutoTokenizer.from_pretrained(directory)
            self.model = AutoModelForSeq2SeqLM.from_pretrained(directory)
        self.model.train()

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    lora_targets = LORA_TARGETS["t5"]

    def encode(self, row: dict[str, Any]) -> dict[str, list[int]]:
        limit = self.cfg.max_length
        src = self.tokenizer(row["prompt"], add_special_tokens=False)["input_ids"][:limit]
        tgt = self.tokenizer(row["target"], add_special_tokens=False)["input_ids"] + [
            self.tokenizer.eos_token_id
        ]
        return {"input_ids": src, "labels": tgt[:limit]}

    def collate(self, examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        ids = pad_field(examples, "input_ids", self.pad_id)
        return {
            "input_ids": ids,
            "attention_mask": (ids != self.pad_id).long(),
            "labels": pad_field(examples, "labels", -100),
        }

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch).loss  # decoder inputs are the labels shifted right, as T5 does

    def save(self, model: torch.nn.Module, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    load_weights = HFCausalFamily.load_weights

    @torch.no_grad()
    def generate(self, model: torch.nn.Module, prompts: list[str], max_new_tokens: int) -> list[str]:
        was_training = model.training
        model.eval()
        outs = []
        for prompt in prompts:
            ids = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
            out = model.generate(
                input_ids=ids[:, : self.cfg.max_length], max_new_tokens=max_new_tokens, do_sample=False
            )
            outs.append(self.tokenizer.decode(out[0], skip_special_tokens=True))
        model.train(was_training)
        return outs

    def describe(self) -> dict[str, Any]:
        return {"family": self.name, "model": self.cfg.model, "model_type": "t5"}
