"""A decoder-only pre-norm Transformer language model, with exact parameter and FLOP counts.

Conventions (Kaplan et al. 2020, "Scaling Laws for Neural Language Models"):

- ``N`` counts *non-embedding* parameters: everything except the token and position
  embeddings. The output projection is tied to the token embedding (``lm_head.weight is
  wte.weight``), so it adds no parameters of its own.
- Linear layers have no biases; LayerNorms have a weight and a bias. Per layer:
  ``ln_1 (2d) + qkv (3 d^2) + attn proj (d^2) + ln_2 (2d) + fc (d d_ff) + mlp proj (d_ff d)``,
  so ``N = n_layer (4 d^2 + 2 d d_ff + 4 d) + 2 d`` (the last term is the final LayerNorm).
- ``N_total = N + vocab_size d + context d``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the Transformer; every default is the small CPU shape used in tests."""

    n_layer: int = 2  # number of Transformer blocks
    d_model: int = 64  # residual stream width
    n_head: int = 4  # attention heads; d_model must be divisible by n_head
    d_ff: int = 0  # MLP hidden width; 0 means 4 * d_model
    context: int = 64  # maximum sequence length (learned position embeddings)
    vocab_size: int = 512  # tokenizer vocabulary size (token ids < vocab_size)
    dropout: float = 0.0  # dropout on attention and residual branches; 0 for scaling studies

    def __post_init__(self) -> None:
        for name in ("n_layer", "d_model", "n_head", "context", "vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.d_ff == 0:
            object.__setattr__(self, "d_ff", 4 * self.d_model)

    def to_dict(self) -> dict:
        return asdict(self)


def non_embedding_params(cfg: ModelConfig) -> int:
    """Hand count of N (Kaplan's non-embedding parameters) for ``cfg``; see the module doc."""
    d, f = cfg.d_model, cfg.d_ff
    return cfg.n_layer * (4 * d * d + 2 * d * f + 4 * d) + 2 * d


def flops_per_token(cfg: ModelConfig) -> dict[str, float]:
    """Training FLOPs per token, both as ``6N`` and with attention and embeddings.

    Kaplan et al. 2020, Table 1: the forward pass costs ``2N + 2 n_layer n_ctx d_attn`` FLOPs
    per token (d_attn = d_model here) plus ``2 d_model n_vocab`` for the (tied) output
    projection ("De-embed"); the backward pass costs twice the forward, so training is 3x:

        C_full / token = 6 N + 6 n_layer n_ctx d_model + 6 d_model n_vocab

    The embedding lookups themselves (``4 d_model`` in Table 1) are negligible and omitted.
    """
    n = non_embedding_params(cfg)
    attn = 2 * cfg.n_layer * cfg.context * cfg.d_model
    unembed = 2 * cfg.d_model * cfg.vocab_size
    return {"6N": 6.0 * n, "full": 3.0 * (2 * n + attn + unembed)}


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.ln_1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.attn_proj = nn.Linear(d, d, bias=False)
        self.ln_2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, cfg.d_ff, bias=False)
        self.mlp_proj = nn.Linear(cfg.d_ff, d, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).contiguous().view(b, t, d)
        x = x + self.drop(self.attn_proj(y))
        x = x + self.drop(self.mlp_proj(F.gelu(self.fc(self.ln_2(x)))))
        return x


class Transformer(nn.Module):
    """Decoder-only pre-norm Transformer LM with tied input/output embeddings."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.context, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        self.apply(self._init)
        # GPT-2 style scaled init for the projections that write into the residual stream
        for name, p in self.named_parameters():
            if name.endswith("attn_proj.weight") or name.endswith("mlp_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def num_params(self, *, non_embedding: bool = True) -> int:
        """Parameter count; ``non_embedding`` leaves out the token and position embeddings."""
        n = sum(p.numel() for p in self.parameters())  # tied weights are counted once
        if non_embedding:
            n -= self.wte.weight.numel() + self.wpe.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Return logits ``(B, T, V)``, and the mean cross-entropy if ``targets`` are given."""
        t = idx.shape[1]
        if t > self.cfg.context:
            raise ValueError(f"sequence length {t} exceeds context {self.cfg.context}")
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss
