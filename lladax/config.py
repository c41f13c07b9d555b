"""Static model configuration: `ModelConfig`, presets, and the Hugging Face config.json mapping.

`ModelConfig` is a frozen (hashable) dataclass so it can be a static argument of `jax.jit`.
Special token ids live here, read from the checkpoint, never hard-coded in the math.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

# the names of `lladax.model.layers.CHECKPOINT_POLICIES`, "none" for no rematerialisation
REMAT_POLICIES = (
    "none",
    "full",
    "dots",
    "dots_no_batch",
    "save_attn_out",
    "save_qkv_proj",
    "offload",
)
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash", "splash_interpret")
DTYPES = ("float32", "bfloat16", "float16")
# "diffusion": LLaDA's bidirectional mask predictor; "autoregressive": the same network with causal
# attention and the next-token loss, the like-for-like baseline (lladax.diffusion.autoregressive);
# "block_diffusion": attention causal across blocks of `block_size` positions and bidirectional
# within one, each block denoised given the clean earlier blocks (BD3-LM, LLaDA 2.x:
# lladax.diffusion.block_sampling).
MODEL_KINDS = ("diffusion", "autoregressive", "block_diffusion")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


# The special token ids of LLaDA's tokenizer: ModelConfig's defaults (the llada_* presets).
LLADA_SPECIAL_IDS: dict[str, int] = dict(
    mask_token_id=126336,
    bos_token_id=126080,
    eos_token_id=126081,
    pad_token_id=126081,
    eot_token_id=126348,
)
# ... and those of the embedded tokenizer's reserved ids (lladax.data.tokenizer): tiny, small.
EMBEDDED_SPECIAL_IDS: dict[str, int] = dict(
    mask_token_id=4, bos_token_id=1, eos_token_id=2, pad_token_id=2, eot_token_id=3
)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes, special token ids and numerics of a LLaDA mask predictor.

    `dtype` is the compute dtype of activations and matmuls; `param_dtype` is the storage dtype of
    the parameters (f32 master weights with bf16 compute is `param_dtype="float32",
    dtype="bfloat16"`).
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    mlp_hidden_size: int
    max_seq_len: int = 4096
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5
    mask_token_id: int = LLADA_SPECIAL_IDS["mask_token_id"]
    bos_token_id: int = LLADA_SPECIAL_IDS["bos_token_id"]
    eos_token_id: int = LLADA_SPECIAL_IDS["eos_token_id"]
    pad_token_id: int = LLADA_SPECIAL_IDS["pad_token_id"]
    eot_token_id: int | None = LLADA_SPECIAL_IDS["eot_token_id"]
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat_policy: str = "full"
    attention_impl: str = "xla"
    init_std: float = 0.02
    kind: str = "diffusion"
    block_size: int | None = None  # kind="block_diffusion" only: positions per block

    def __post_init__(self) -> None:
        shapes = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size")
        for name in (*shapes, "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}: "
                "choose n_heads that divides d_model"
            )
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        for name in LLADA_SPECIAL_IDS:  # every special id field
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ConfigError(
                    f"{name}={value} is outside the vocabulary [0, {self.vocab_size}): "
                    "the special ids must come from the same tokenizer as vocab_size"
                )
        for name, low in (("rope_theta", "> 0"), ("rms_norm_eps", ">= 0"), ("init_std", ">= 0")):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not (
                value > 0 if low == "> 0" else value >= 0
            ):
                raise ConfigError(f"ModelConfig.{name}={value!r} must be a number {low}")
        if self.mask_token_id == self.pad_token_id:
            raise ConfigError("mask_token_id must differ from pad_token_id")
        for name, allowed in (
            ("dtype", DTYPES),
            ("param_dtype", DTYPES),
            ("remat_policy", REMAT_POLICIES),
            ("attention_impl", ATTENTION_IMPLS),
            ("kind", MODEL_KINDS),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"ModelConfig.{name}={getattr(self, name)!r} is unknown; use one of {allowed}"
                )
        self._check_block_size()

    def _check_block_size(self) -> None:
        if self.kind != "block_diffusion":
            if self.block_size is not None:
                raise ConfigError(
                    f"ModelConfig.block_size={self.block_size!r} only applies to "
                    f"kind='block_diffusion', not kind={self.kind!r}: unset it or set the kind"
                )
            return
        size = self.block_size
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ConfigError(
                f"ModelConfig.block_size={size!r} must be a positive int for "
                "kind='block_diffusion' (e.g. 32, LLaDA 2.0's)"
            )

    @property
    def causal(self) -> bool:
        return self.kind == "autoregressive"

    @property
    def attention_block(self) -> int | None:
        """The block-causal span of the attention: a query sees every key whose block (position
        // span) is not after its own. None: bidirectional (LLaDA); 1: causal (the autoregressive
        baseline); block_size for block diffusion."""
        return {"diffusion": None, "autoregressive": 1}.get(self.kind, self.block_size)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def param_count(self, *, embeddings: bool = True) -> int:
        """Exact parameter count (embedding + head counted once each)."""
        d, h, kv = self.d_model, self.mlp_hidden_size, self.n_kv_heads * self.head_dim
        per_layer = 2 * d + d * d + 2 * d * kv + d * d + 3 * d * h
        total = self.n_layers * per_layer + d
        if embeddings:
            total += 2 * self.vocab_size * d
        return total

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward = 3 × forward), Kaplan/PaLM style.

        6·N for every weight matmul (N = non-embedding params + the LM head; the embedding is a
        gather) plus attention scores and values: 6 · 2 · n_layers · seq_len · d_model — the
        attention is bidirectional, so every query sees all `seq_len` keys (no causal halving).
        The autoregressive baseline counts half the attention, as MaxText does for causal models.
        Block diffusion trains on the noisy and the clean copy side by side (2 × seq_len rows
        through every matmul); their block-structured mask sees about as many query-key pairs as
        one bidirectional pass over seq_len.
        """
        d = self.d_model
        matmul_params = self.param_count(embeddings=False) + self.vocab_size * d
        attention = 2 * self.n_layers * seq_len * d / (2 if self.causal else 1)
        copies = 2 if self.kind == "block_diffusion" else 1
        return 6.0 * (copies * matmul_params + attention)

    def forward_flops(self, seq_len: int, query_len: int | None = None) -> float:
        """Matmul FLOPs of one inference forward over one sequence of `seq_len` positions.

        With `query_len`, the last layer's queries/MLP and the LM head see only that many rows
        (the sampler's block window); keys and values always cover the whole sequence.
        """
        d, f, v, n = self.d_model, self.mlp_hidden_size, self.vocab_size, seq_len
        kv = self.n_kv_heads * self.head_dim

        def layer(nq: int) -> float:
            projections = 2 * nq * d * d * 2 + 2 * n * d * kv * 2  # q, out on queries; k, v on all
            return projections + 2 * 2 * nq * n * d + 2 * nq * d * f * 3  # scores·V, SwiGLU MLP

        q = n if query_len is None else query_len
        return (self.n_layers - 1) * layer(n) + layer(q) + 2 * q * d * v

    # --- Hugging Face config.json --------------------------------------------------------------
    @classmethod
    def from_hf_dict(
        cls, hf: dict[str, Any], special_tokens: dict[str, Any] | None = None, **overrides: Any
    ) -> ModelConfig:
        """Build from a LLaDA `config.json` dict (the OLMo-derived `LLaDAConfig` keys)."""
        checks = {
            "block_type": ("llama",),
            "activation_type": ("silu", "swiglu"),
            "layer_norm_type": ("rms",),
        }
        for key, allowed in checks.items():
            value = hf.get(key, allowed[0])
            if value not in allowed:
                raise ConfigError(
                    f"config.json has {key}={value!r}; lladax implements LLaDA's {allowed[0]!r} "
                    f"only: convert a LLaDA checkpoint (block_type='llama', rms norm, silu)"
                )
        for key in (
            "alibi",
            "include_bias",
            "include_qkv_bias",
            "weight_tying",
            "scale_logits",
            "input_emb_norm",
            "attention_layer_norm",
            "bias_for_layer_norm",
        ):
            if hf.get(key):
                raise ConfigError(
                    f"config.json sets {key}=true, which LLaDA does not use and lladax does not "
                    "implement: set it to false or use a LLaDA checkpoint"
                )
        if not hf.get("rope", True):
            raise ConfigError("config.json sets rope=false; LLaDA uses rotary embeddings")
        missing = [k for k in ("d_model", "n_layers", "n_heads", "mlp_hidden_size") if k not in hf]
        if missing:
            raise ConfigError(f"config.json lacks {missing}: is this a LLaDA config.json?")
        special = dict(special_tokens or {})
        vocab = int(hf.get("embedding_size") or hf["vocab_size"])
        n_heads = int(hf["n_heads"])

        def token(key: str, default: int | None) -> int | None:
            value = special.get(key, hf.get(key, default))
            return None if value is None else int(value)

        eos = token("eos_token_id", None)
        if eos is None:
            raise ConfigError(
                "config.json has no eos_token_id: add it (LLaDA-8B uses "
                f"{LLADA_SPECIAL_IDS['eos_token_id']})"
            )
        kwargs: dict[str, Any] = dict(
            vocab_size=vocab,
            d_model=int(hf["d_model"]),
            n_layers=int(hf["n_layers"]),
            n_heads=n_heads,
            n_kv_heads=int(hf.get("n_kv_heads") or n_heads),
            mlp_hidden_size=int(hf["mlp_hidden_size"]),
            max_seq_len=int(hf.get("max_sequence_length", 4096)),
            rope_theta=float(hf.get("rope_theta", 10000.0)),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
            mask_token_id=token("mask_token_id", LLADA_SPECIAL_IDS["mask_token_id"]),
            bos_token_id=token("bos_token_id", None)
            if token("bos_token_id", None) is not None
            else eos,
            eos_token_id=eos,
            pad_token_id=token("pad_token_id", eos),
            eot_token_id=token("eot_token_id", None),
        )
        if "lladax_kind" in hf:  # a lladax export of another kind than LLaDA's (`to_hf_dict`)
            kwargs.update(kind=hf["lladax_kind"], block_size=hf.get("block_size"))
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf_dict(self) -> dict[str, Any]:
        """A `config.json` dict the LLaDA Hugging Face remote code loads."""
        hf = {
            "activation_type": "silu",
            "alibi": False,
            "alibi_bias_max": 8.0,
            "architectures": ["LLaDAModelLM"],
            "attention_dropout": 0.0,
            "attention_layer_norm": False,
            "attention_layer_norm_with_affine": True,
            "auto_map": {
                "AutoConfig": "configuration_llada.LLaDAConfig",
                "AutoModel": "modeling_llada.LLaDAModelLM",
                "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
            },
            "bias_for_layer_norm": False,
            "block_group_size": 1,
            "block_type": "llama",
            "bos_token_id": self.bos_token_id,
            "d_model": self.d_model,
            "embedding_dropout": 0.0,
            "embedding_size": self.vocab_size,
            "eos_token_id": self.eos_token_id,
            "flash_attention": False,
            "include_bias": False,
            "include_qkv_bias": False,
            "init_device": "meta",
            "init_fn": "mitchell",
            "init_std": self.init_std,
            "input_emb_norm": False,
            "layer_norm_type": "rms",
            "layer_norm_with_affine": True,
            "mask_token_id": self.mask_token_id,
            "max_sequence_length": self.max_seq_len,
            "mlp_hidden_size": self.mlp_hidden_size,
            "model_type": "llada",
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "n_layers": self.n_layers,
            "pad_token_id": self.pad_token_id,
            "residual_dropout": 0.0,
            "rms_norm_eps": self.rms_norm_eps,
            "rope": True,
            "rope_full_precision": True,
            "rope_theta": self.rope_theta,
            "scale_logits": False,
            "torch_dtype": self.param_dtype,
            "use_cache": False,
            "vocab_size": self.vocab_size,
            "weight_tying": False,
        }
        if self.kind != "diffusion":  # keys LLaDA's remote code ignores: only lladax reads them
            hf.update(lladax_kind=self.kind, block_size=self.block_size)
        return hf

    def special_tokens(self) -> dict[str, int | None]:
        return {
            "mask_token_id": self.mask_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "eot_token_id": self.eot_token_id,
        }


# The presets, a row each: vocab_size, d_model, n_layers, n_heads (= n_kv_heads: all use plain
# multi-head attention), mlp_hidden_size, max_seq_len, and the special ids of their tokenizer.
_PRESET_ROWS: dict[str, tuple[int, int, int, int, int, int, dict[str, int]]] = {
    # CI-sized; the special ids are the embedded tokenizer's reserved ids (lladax.data.tokenizer)
    "tiny": (512, 64, 2, 4, 128, 128, EMBEDDED_SPECIAL_IDS),
    # a few M params: learns visibly on a CPU in minutes
    "small": (2048, 256, 4, 4, 768, 256, EMBEDDED_SPECIAL_IDS),
    "llada_1b": (126464, 2048, 22, 16, 5632, 4096, LLADA_SPECIAL_IDS),
    # exact LLaDA-8B shapes (8.02B params)
    "llada_8b": (126464, 4096, 32, 32, 12288, 4096, LLADA_SPECIAL_IDS),
}
_PRESET_COLUMNS = ("vocab_size", "d_model", "n_layers", "n_heads", "mlp_hidden_size", "max_seq_len")
PRESETS: dict[str, dict[str, Any]] = {
    name: {**dict(zip(_PRESET_COLUMNS, shape, strict=True)), "n_kv_heads": shape[3], **special_ids}
    for name, (*shape, special_ids) in _PRESET_ROWS.items()
}


# Where each kind is served: the one-line refusal of a kind-specific function points there.
_SERVED_BY = {
    "diffusion": "lladax.sampling / lladax.likelihood",
    "autoregressive": "lladax.diffusion.autoregressive",
    "block_diffusion": "lladax.sampling.generate / lladax.likelihood (block diffusion)",
}


def check_kind(cfg: ModelConfig, expected: str | tuple[str, ...], what: str) -> None:
    """One-line error when a model of the wrong kind reaches a kind-specific function."""
    allowed = (expected,) if isinstance(expected, str) else expected
    if cfg.kind not in allowed:
        raise ValueError(
            f"{what} needs a {' or '.join(allowed)} model but this checkpoint is "
            f"kind={cfg.kind!r}: use {_SERVED_BY[cfg.kind]} for it"
        )


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A named preset (`tiny`, `small`, `llada_1b`, `llada_8b`) with optional field overrides."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"unknown ModelConfig field(s) {unknown}; valid fields: {sorted(fields)}")
    return ModelConfig(**{**PRESETS[name], **overrides})


MASK_EPS_DEFAULT = 1e-3  # ε of p_mask = (1 − ε)·t + ε
