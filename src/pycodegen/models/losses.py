"""Cross-entropy of a linear output layer, computed chunk by chunk without the full logits tensor.

A language model's loss is usually `cross_entropy(hidden @ W.T, labels)`: at batch 8 × 256 and the
embedded model's 49k vocabulary that materialises a 400 MB logits tensor, upcasts it (another 400 MB in
bf16), takes a log-softmax (400 MB more) and, in backward, a zero-filled gradient of the same size. On
this CPU those memory passes cost a quarter of a LoRA training step under bf16.

`linear_cross_entropy` instead walks the tokens in chunks: per chunk it computes the logits, the loss
and, when gradients are wanted, the gradient of the chunk's logits (softmax minus one-hot), which it
immediately turns into the gradients of the hidden states and of W. Only those two (hidden-sized and
W-sized) are kept for backward. The GEMMs are the same as the plain path; the vocabulary-sized memory
passes shrink to one chunk (at most 32 MB of fp32 logits) at a time.

The same idea is Liger-Kernel's `FusedLinearCrossEntropy` and Apple's cut-cross-entropy; both are
Triton kernels (CUDA only), so this plain-torch version is written here to run on the CPU as well.
"""

from __future__ import annotations

import torch

IGNORE = -100
CHUNK_ELEMENTS = 1 << 23  # 8M fp32 logits (32 MB) per chunk


def _compute_dtype(device_type: str, dtype: torch.dtype) -> torch.dtype:
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        labels: torch.Tensor,
        compute_dtype: torch.dtype,
        grad_hidden_wanted: bool,
        grad_weight_wanted: bool,
        grad_bias_wanted: bool,
    ) -> torch.Tensor:
        n, vocab = hidden.shape[0], weight.shape[0]
        valid = labels != IGNORE
        count = int(valid.sum())
        w = weight.to(compute_dtype)
        grad_hidden = torch.empty_like(hidden) if grad_hidden_wanted else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            if grad_weight_wanted
            else None
        )
        grad_bias = (
            torch.zeros(vocab, dtype=torch.float32, device=weight.device) if grad_bias_wanted else None
        )
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        chunk = max(1, min(n, CHUNK_ELEMENTS // vocab))
        scale = 1.0 / max(count, 1)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, n, chunk):
                end = min(n, start + chunk)
                h = hidden[start:end].to(compute_dtype)
                y = labels[start:end]
                ok = valid[start:end]
                logits = (h @ w.T).float()
                if bias is not None:
                    logits += bias.float()
                target = logits.gather(1, y.clamp(min=0)[:, None]).squeeze(1)
                peak = logits.amax(dim=1, keepdim=True)
                probs = logits.sub_(peak).exp_()  # in place: the chunk's logits become exp(logit - max)
                sums = probs.sum(dim=1)
                lse = peak.squeeze(1) + sums.log()
                total += ((lse - target) * ok).sum()
                if grad_hidden is None and grad_weight is None and grad_bias is None:
                    continue
                # d loss / d logits = (softmax - onehot) / count on the tokens that count, 0 elsewhere
                probs.mul_((ok * scale / sums)[:, None])
                rows = torch.arange(end - start, device=y.device)[ok]
                probs[rows, y[ok]] -= scale
                g = probs.to(compute_dtype)
                if grad_hidden is not None:
                    grad_hidden[start:end] = g @ w
                if grad_weight is not None:
                    grad_weight += (g.T @ h).float()
                if grad_bias is not None:
                    grad_bias += probs.sum(dim=0)
        ctx.save_for_backward(
            *(t if t is not None else torch.empty(0) for t in (grad_hidden, grad_weight, grad_bias))
        )
        ctx.present = (grad_hidden is not None, grad_weight is not None, grad_bias is not None)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total * scale

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        saved = ctx.saved_tensors
        grads = [
            (t * grad_out).to(dtype) if present else None
            for t, present, dtype in zip(saved, ctx.present, ctx.dtypes, strict=True)
        ]
        return grads[0], grads[1], grads[2], None, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T (+ bias)` against `labels` (-100 ignored).

    hidden: (..., H); weight: (V, H); labels: hidden's leading shape. Equal to
    `F.cross_entropy((hidden @ weight.T).float().flatten(0, -2), labels.flatten(), ignore_index=-100)`,
    under autocast too (the matmuls run in the autocast dtype, the softmax in fp32).

    >>> h, w, y = torch.randn(5, 4), torch.randn(7, 4), torch.tensor([1, 6, -100, 0, 3])
    >>> ref = torch.nn.functional.cross_entropy(h @ w.T, y)
    >>> bool(torch.allclose(linear_cross_entropy(h, w, y), ref))
    True
    """
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_labels = labels.reshape(-1)
    if flat_labels.shape[0] != flat_hidden.shape[0]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match hidden states {tuple(hidden.shape)}")
    grad = torch.is_grad_enabled()
    return _LinearCrossEntropy.apply(
        flat_hidden,
        weight,
        bias,
        flat_labels,
        _compute_dtype(hidden.device.type, hidden.dtype),
        grad and hidden.requires_grad,
        grad and weight.requires_grad,
        grad and bias is not None and bias.requires_grad,
    )
