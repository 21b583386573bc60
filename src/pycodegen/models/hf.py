"""Hugging Face families: `hf-causal` (decoder-only: the embedded SmolLM2, a local GPT-2/Llama-shaped
directory, or a new model from a config) with loss masking of prompt tokens, and `hf-seq2seq`
(T5/CodeT5+ shapes); their LoRA targets, checkpoint loading and greedy decoding for dev evaluation.

A new model's default size (`new:gpt2`, `new:llama`: 4 layers × 256 wide, 4 heads, about 3.2M parameters
besides the embeddings) is the smallest that learns more than token frequencies on the stdlib; set
others with `--model-arg` (the names of the architecture's transformers config; a typo is an error).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pycodegen.data.tokenizers import FIM_TOKENS
from pycodegen.errors import ConfigError
from pycodegen.models.family import BASE_DIR, Family, check_model_args, is_adapter, pad_field
from pycodegen.models.losses import linear_cross_entropy
from pycodegen.zoo import DEFAULT_MODEL

# Default LoRA target modules by architecture (the HUST system used q, k, v on T5).
LORA_TARGETS = {
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "t5": ["q", "k", "v"],
}
NEW_PREFIX = "new:"
# Default sizes of new models (see the module docstring).
NEW_SIZES: dict[str, dict[str, int]] = {
    "gpt2": {"n_layer": 4, "n_embd": 256, "n_head": 4, "n_positions": 512},
    "llama": {
        "num_hidden_layers": 4,
        "hidden_size": 256,
        "num_attention_heads": 4,
        "intermediate_size": 768,
        "max_position_embeddings": 512,
    },
    "t5": {"d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_heads": 4},
}
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


def config_arg_names(model_type: str) -> set[str]:
    """The architecture arguments a transformers config of `model_type` knows (its fields and aliases)."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type)
    return set(config.to_dict()) | set(getattr(config, "attribute_map", {}))


def new_config(model_type: str, tokenizer: Any, args: dict[str, Any], **special: Any) -> Any:
    """A transformers config for a new model of `model_type`, sized by NEW_SIZES and `args`."""
    from transformers import AutoConfig

    check_model_args(f"new:{model_type}", args, config_arg_names(model_type))
    return AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), **special, **{**NEW_SIZES[model_type], **args}
    )


def new_causal_lm(model_type: str, tokenizer: Any, args: dict[str, Any]) -> torch.nn.Module:
    """A freshly initialised decoder-only model of an HF architecture, sized by `args`."""
    from transformers import AutoModelForCausalLM

    if model_type not in ("gpt2", "llama"):
        raise ConfigError(f"new models can be of type gpt2 or llama, not {model_type!r}")
    config = new_config(
        model_type,
        tokenizer,
        args,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return AutoModelForCausalLM.from_config(config)


def dataset_tokenizer(data_dir: Path) -> Any:
    """The BPE a dataset was prepared with (`--train-tokenizer`), which new models use."""
    from transformers import AutoTokenizer

    tok_dir = data_dir / "tokenizer"
    if not tok_dir.is_dir():
        raise ConfigError(
            f"a new model needs the dataset's tokenizer: {tok_dir} is missing "
            "(prepare with --train-tokenizer)"
        )
    return AutoTokenizer.from_pretrained(tok_dir)


def plain_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A model's weights as CPU tensors (a snapshot of a new model's initial weights); cloned, so that
    tied weights become separate tensors, which safetensors can save."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


class HFFamily(Family):
    """What both HF families share: the tokenizer, saving with save_pretrained, and keeping a new
    model's initial weights so that a LoRA checkpoint over it carries its base (BASE_DIR)."""

    tokenizer: Any
    base_state: dict[str, torch.Tensor] | None = None

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def keep_new_base(self) -> None:
        if self.cfg.mode != "full" and self.model is not None:
            self.base_state = plain_state(self.model)

    def save_files(self, model: torch.nn.Module, directory: Path) -> None:
        model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        if is_adapter(model) and self.base_state is not None:
            from safetensors.torch import save_file

            (directory / BASE_DIR).mkdir(exist_ok=True)
            save_file(self.base_state, str(directory / BASE_DIR / "model.safetensors"))
            model.get_base_model().config.save_pretrained(directory / BASE_DIR)  # type: ignore[operator]

    def architecture(self, model: torch.nn.Module) -> dict[str, Any]:
        base = model.get_base_model() if is_adapter(model) else model  # type: ignore[operator]
        config = base.config
        names = getattr(config, "architectures", None) or [type(base).__name__]
        return {"family": self.name, "model_type": config.model_type, "architecture": names[0]}

    def describe(self) -> dict[str, Any]:
        config = getattr(self.model, "config", None)
        return {
            "family": self.name,
            "model": self.cfg.model,
            "model_type": getattr(config, "model_type", None),
        }


class HFCausalFamily(HFFamily):
    name = "hf-causal"
    views = ("docstring-to-body", "instruction", "lm-windows")
    generates = True

    def model_reference(self) -> str | None:
        return self.cfg.model or DEFAULT_MODEL

    def setup(self) -> None:
        ref = self.model_reference() or DEFAULT_MODEL
        if ref.startswith(NEW_PREFIX):
            self.tokenizer = dataset_tokenizer(self.data_dir)
            self.model = new_causal_lm(ref[len(NEW_PREFIX) :], self.tokenizer, self.cfg.model_args)
            self.keep_new_base()
        else:
            from pycodegen.zoo import load_causal_lm

            if self.cfg.model_args:
                raise ConfigError(
                    f"--model-arg sizes a new model (new:gpt2, new:llama); {ref} has its own architecture"
                )
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
            if is_adapter(self.model):
                # A LoRA checkpoint (a shipped zoo fine-tune too) is trained further as its merged model,
                # trainable like any loaded model; the card then names it as the base of the new adapter.
                self.model = self.model.merge_and_unload().requires_grad_(True)
            if self.manifest.get("task") == "lm-windows":
                from transformers import AutoTokenizer

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

    def setup_from_checkpoint(self, directory: Path, card: dict[str, Any]) -> None:
        from pycodegen.zoo import load_causal_lm

        self.model, self.tokenizer = load_causal_lm(str(directory))  # a LoRA checkpoint: a PeftModel
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if card.get("fim"):  # kept in the card of what is saved from here (`pycodegen export`)
            self.manifest = {**self.manifest, "fim": card["fim"]}

    def fim_record(self) -> dict[str, Any] | None:
        """The card's FIM record: the sentinels by role, the modes and rate the dataset was prepared with
        (`prepare --fim-rate`); None for a model not trained for fill-in-the-middle."""
        fim = self.manifest.get("fim")
        if not fim:
            return None
        return {k: fim[k] for k in ("tokens", "modes", "rate", "spm_rate") if k in fim}

    def card(self, model: torch.nn.Module) -> dict[str, Any]:
        return {**super().card(model), "fim": self.fim_record()}

    def lora_options(self) -> dict[str, Any]:
        """On FIM data, the sentinels' embedding rows train beside the adapters and are saved with them
        (PEFT's trainable tokens; an output layer tied to the embedding follows): rows a resize added
        would otherwise stay random, and the sentinels carry the whole FIM format."""
        if self.fim_record() is None:
            return {}
        return {
            "trainable_token_indices": [self.tokenizer.convert_tokens_to_ids(t) for t in FIM_TOKENS.values()]
        }

    @property
    def lora_targets(self) -> list[str]:  # type: ignore[override]
        model_type = getattr(getattr(self.model, "config", None), "model_type", "")
        return LORA_TARGETS.get(model_type, LORA_TARGETS["llama"])

    def encode(self, row: dict[str, Any]) -> dict[str, list[int]] | None:
        if "input_ids" in row:  # lm-windows: every token is a target
            return {"input_ids": row["input_ids"], "labels": row["input_ids"]}
        prompt = self.tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        target = self.tokenizer(row["target"], add_special_tokens=False)["input_ids"] + [
            self.tokenizer.eos_token_id
        ]
        limit = self.cfg.max_length
        if getattr(self.cfg, "drop_long", False) and len(prompt) + len(target) > limit:
            return None  # left out by the trainer (drop_long), which counts it
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
        base = model.get_base_model() if is_adapter(model) else model  # type: ignore[operator]
        config = getattr(base, "config", None)
        if getattr(config, "model_type", None) not in FUSED_LOSS_TYPES:
            return None
        head = base.get_output_embeddings()
        if type(head) is not torch.nn.Linear:  # e.g. LoRA on the output layer: the model's own loss
            return None
        return base.get_decoder(), head

    @torch.no_grad()
    def generate(
        self, model: torch.nn.Module, prompts: list[str], max_new_tokens: int, beams: int = 1
    ) -> list[str]:
        """Greedy continuations of already formatted prompts, decoded in batches of 8."""
        was_training = model.training
        model.eval()
        texts = greedy_causal(model, self.tokenizer, prompts, max_new_tokens)
        model.train(was_training)
        return texts


def greedy_causal(
    model: torch.nn.Module, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch_size: int = 8
) -> list[str]:
    """Greedy decoding of a decoder-only model, batched. Prompts are left-padded here, by hand: setting
    the tokenizer's padding_side would change the training tokenizer, and with it the saved checkpoints."""
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    device = next(model.parameters()).device
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        encoded = [
            tokenizer(p, add_special_tokens=False)["input_ids"] or [pad]
            for p in prompts[start : start + batch_size]
        ]
        width = max(len(ids) for ids in encoded)
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device)  # (B, T)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
        out = model.generate(  # type: ignore[operator]
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
        texts += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return texts


class HFSeq2SeqFamily(HFFamily):
    """T5/CodeT5+-shaped encoder-decoders: a local directory, or `new:t5` sized by model_args.

    The HUST setting (decoder frozen except cross-attention) is `freeze: ["^decoder\\."]` with
    `unfreeze: ["EncDecAttention"]`.
    """

    name = "hf-seq2seq"
    views = ("docstring-to-body", "instruction")
    generates = True
    lora_targets = LORA_TARGETS["t5"]

    def setup(self) -> None:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        ref = self.cfg.model
        if ref is None:
            raise ConfigError("hf-seq2seq needs --model: a local T5/CodeT5+ directory or new:t5")
        if ref.startswith(NEW_PREFIX):
            if ref != "new:t5":
                raise ConfigError(f"new encoder-decoders can be new:t5, not {ref!r}")
            self.tokenizer = dataset_tokenizer(self.data_dir)
            config = new_config(
                "t5",
                self.tokenizer,
                self.cfg.model_args,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                decoder_start_token_id=self.tokenizer.pad_token_id,
            )
            self.model = AutoModelForSeq2SeqLM.from_config(config)
            self.keep_new_base()
        else:
            from pycodegen.zoo import materialize, resolve_model

            if self.cfg.model_args:
                raise ConfigError(f"--model-arg sizes a new model (new:t5); {ref} has its own architecture")
            directory = materialize(resolve_model(ref))
            self.tokenizer = AutoTokenizer.from_pretrained(directory)
            self.model = AutoModelForSeq2SeqLM.from_pretrained(directory)
        self.model.train()

    def setup_from_checkpoint(self, directory: Path, card: dict[str, Any]) -> None:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        adapter = card.get("adapter")
        if not adapter:
            self.model = AutoModelForSeq2SeqLM.from_pretrained(directory)
            return
        from peft import PeftModel

        from pycodegen.zoo import materialize, resolve_model

        base_ref = str(adapter.get("base_model") or "")
        inside = directory / base_ref
        base_dir = inside if base_ref and inside.is_dir() else materialize(resolve_model(base_ref))
        self.model = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(base_dir), directory)

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

    beam_search = True

    @torch.no_grad()
    def generate(
        self, model: torch.nn.Module, prompts: list[str], max_new_tokens: int, beams: int = 1
    ) -> list[str]:
        was_training = model.training
        model.eval()
        outs = []
        for prompt in prompts:
            ids = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
            out = model.generate(  # type: ignore[operator]
                input_ids=ids[:, : self.cfg.max_length],
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=beams,
            )
            outs.append(self.tokenizer.decode(out[0], skip_special_tokens=True))
        model.train(was_training)
        return outs
