#!/usr/bin/env python3
"""Independent reference forward pass for GGUF models (numpy, float64): its own GGUF
reader and dequantisers, and each architecture written out from llama.cpp's published
conventions (tensor names, metadata keys, RoPE order), not from duet's C code. Unlike duet
it evaluates the whole sequence at once with explicit causal / sliding-window masks and no
KV cache. Prints the logits of every position, one line of n_vocab numbers per token.
Usage: gguf_ref.py MODEL.gguf [--n-ctx N] [--lora ADAPTER.gguf SCALE ...] TOKEN [TOKEN ...]
(--lora, repeatable: a llama.cpp LoRA adapter merged into the weights in float64 as that
format defines it: W += SCALE * alpha / r * B @ A, B from "<W>.lora_b" (ggml [r, n_out]), A
from "<W>.lora_a" ([n_in, r]), alpha from adapter.lora.alpha, SCALE alone when alpha is 0;
N: the context size the caller runs with; LongRoPE files use their long factors beyond
rope.scaling.original_context_length; default: the model's context_length)
Architectures: llama, qwen2 (q/k/v biases), qwen3 (per-head q/k RMSNorm), phi3 (fused
attn_qkv and ffn_up = [gate; up], sliding window on every layer), gemma2 (embedding scale,
GELU, post-norms, soft caps, sliding window on even layers)."""
import sys

import numpy as np

from gguf_read import read_header

# ---- GGUF tensors (the metadata reader is gguf_read.py) ------------------------------------
def dequant(t, raw, n):
    """n elements of ggml type t from bytes raw, as float64."""
    if t == 0:
        return np.frombuffer(raw, "<f4", n).astype(np.float64)
    if t == 1:
        return np.frombuffer(raw, "<f2", n).astype(np.float64)
    if t == 30:  # bf16: the high half of an f32
        return (np.frombuffer(raw, "<u2", n).astype(np.uint32) << 16).view("<f4").astype(np.float64)
    if t == 8:  # Q8_0: blocks of f16 scale + 32 int8
        b = np.frombuffer(raw, np.uint8, n // 32 * 34).reshape(-1, 34)
        d = b[:, :2].copy().view("<f2").astype(np.float64)
        return (d * b[:, 2:].view(np.int8)).reshape(-1)
    if t == 2:  # Q4_0: f16 scale + 16 bytes; low nibbles are elements 0..15, high 16..31
        b = np.frombuffer(raw, np.uint8, n // 32 * 18).reshape(-1, 18)
        d = b[:, :2].copy().view("<f2").astype(np.float64)
        q = np.concatenate([b[:, 2:] & 15, b[:, 2:] >> 4], axis=1).astype(np.float64) - 8
        return (d * q).reshape(-1)
    raise SystemExit("gguf_ref: tensor type %d not implemented" % t)


BYTES = {0: (1, 4), 1: (1, 2), 30: (1, 2), 8: (32, 34), 2: (32, 18)}


def load(path):
    data = open(path, "rb").read()
    r, n_t, meta = read_header(data, "gguf_ref", path)
    infos = []
    for _ in range(n_t):
        name = r.string()
        nd = r.take("<I")
        ne = [r.take("<Q") for _ in range(nd)]
        infos.append((name, ne, r.take("<I"), r.take("<Q")))
    align = meta.get("general.alignment", 32)
    base = (r.o + align - 1) // align * align
    tensors = {}
    for name, ne, t, off in infos:
        n = int(np.prod(ne))
        blk, size = BYTES[t]
        v = dequant(t, data[base + off:base + off + n // blk * size], n)
        tensors[name] = v.reshape(list(reversed(ne))) if len(ne) > 1 else v
    return meta, tensors


# ---- forward --------------------------------------------------------------------------------
def rms(x, w, eps):
    return w * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def rope(x, pos, n_rot, base, neox, factors, mscale):
    """x: [T, heads, hd]; rotate the first n_rot dims of each head (frequencies divided by
    factors) and scale them by mscale."""
    half = n_rot // 2
    ang = pos[:, None] * base ** (-2.0 * np.arange(half) / n_rot) / factors  # [T, half]
    c, s = mscale * np.cos(ang)[:, None, :], mscale * np.sin(ang)[:, None, :]
    x = x.copy()
    i0 = np.arange(half) if neox else 2 * np.arange(half)
    i1 = i0 + half if neox else i0 + 1
    a, b = x[..., i0].copy(), x[..., i1].copy()
    x[..., i0] = a * c - b * s
    x[..., i1] = a * s + b * c
    return x


def forward(meta, W, toks, n_ctx=None):
    arch = meta["general.architecture"]
    if arch not in ("llama", "qwen2", "qwen3", "phi3", "gemma2"):
        raise SystemExit("gguf_ref: architecture %s not implemented" % arch)

    def hp(k, d=None):
        return meta.get(arch + "." + k, d)

    E, L, H = hp("embedding_length"), hp("block_count"), hp("attention.head_count")
    Hkv = hp("attention.head_count_kv", H)
    hd = hp("attention.key_length", E // H)
    n_rot = hp("rope.dimension_count", hd)
    eps, base = hp("attention.layer_norm_rms_epsilon", 1e-5), hp("rope.freq_base", 10000.0)
    neox = arch != "llama"
    factors = W.get("rope_freqs.weight", np.ones(n_rot // 2))
    if "rope_factors_long.weight" in W:  # Phi-3 LongRoPE: by the context the caller runs
        orig = hp("rope.scaling.original_context_length", hp("context_length"))
        long = (n_ctx or hp("context_length")) > orig
        factors = W["rope_factors_long.weight" if long else "rope_factors_short.weight"]
    mscale = hp("rope.scaling.attn_factor", 1.0)
    gemma2 = arch == "gemma2"
    scale = 1.0 / np.sqrt(hd)
    cap_a = cap_f = 0.0
    swa_layers, n_swa = set(), 0
    if gemma2:
        n_swa = hp("attention.sliding_window", 4096)
        cap_a = hp("attn_logit_softcapping", 50.0)
        cap_f = hp("final_logit_softcapping", 30.0)
        swa_layers = set(range(0, L, 2))
        if L == 46:
            scale = 1.0 / np.sqrt(E // H)
    if arch == "phi3":
        n_swa = hp("attention.sliding_window", 0)
        swa_layers = set(range(L)) if n_swa else set()
    T = len(toks)
    pos = np.arange(T, dtype=np.float64)
    causal = pos[None, :] <= pos[:, None]                      # [query, key]
    window = causal & (pos[:, None] - pos[None, :] < max(n_swa, 1))
    x = W["token_embd.weight"][toks]
    if gemma2:
        x = x * np.sqrt(E)
    for l in range(L):
        def w(s):
            return W.get("blk.%d.%s" % (l, s))
        h = rms(x, w("attn_norm.weight"), eps)
        if w("attn_qkv.weight") is not None:
            qkv = h @ w("attn_qkv.weight").T
            q, k, v = qkv[:, :H * hd], qkv[:, H * hd:(H + Hkv) * hd], qkv[:, (H + Hkv) * hd:]
        else:
            q, k, v = h @ w("attn_q.weight").T, h @ w("attn_k.weight").T, h @ w("attn_v.weight").T
        # biases: qwen2 has all three; elsewhere each is optional on its own
        q = q + w("attn_q.bias") if w("attn_q.bias") is not None else q
        k = k + w("attn_k.bias") if w("attn_k.bias") is not None else k
        v = v + w("attn_v.bias") if w("attn_v.bias") is not None else v
        q, k, v = q.reshape(T, H, hd), k.reshape(T, Hkv, hd), v.reshape(T, Hkv, hd)
        if w("attn_q_norm.weight") is not None:
            q, k = rms(q, w("attn_q_norm.weight"), eps), rms(k, w("attn_k_norm.weight"), eps)
        q = rope(q, pos, n_rot, base, neox, factors, mscale)
        k = rope(k, pos, n_rot, base, neox, factors, mscale)
        mask = window if l in swa_layers else causal
        att = np.zeros((T, H, hd))
        for hh in range(H):
            kv = hh // (H // Hkv)
            sc = q[:, hh] @ k[:, kv].T * scale
            if cap_a:
                sc = cap_a * np.tanh(sc / cap_a)
            sc = np.where(mask, sc, -np.inf)
            p = np.exp(sc - sc.max(axis=1, keepdims=True))
            att[:, hh] = (p / p.sum(axis=1, keepdims=True)) @ v[:, kv]
        o = att.reshape(T, H * hd) @ w("attn_output.weight").T
        if gemma2:
            o = rms(o, w("post_attention_norm.weight"), eps)
        x = x + o
        h = rms(x, w("ffn_norm.weight"), eps)
        if arch == "phi3":
            gu = h @ w("ffn_up.weight").T
            g, u = gu[:, :gu.shape[1] // 2], gu[:, gu.shape[1] // 2:]
        else:
            g, u = h @ w("ffn_gate.weight").T, h @ w("ffn_up.weight").T
        if gemma2:
            a = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g ** 3)))
        else:
            a = g / (1 + np.exp(-g))
        d = (a * u) @ w("ffn_down.weight").T
        if gemma2:
            d = rms(d, w("post_ffw_norm.weight"), eps)
        x = x + d
    out = W.get("output.weight")
    if out is None or gemma2:
        out = W["token_embd.weight"]
    logits = rms(x, W["output_norm.weight"], eps) @ out.T
    if cap_f:
        logits = cap_f * np.tanh(logits / cap_f)
    return logits


def merge_lora(W, path, scale):
    meta, T = load(path)
    alpha = float(meta.get("adapter.lora.alpha", 0.0))
    for name, a in T.items():
        if not name.endswith(".lora_a"):
            continue
        base = name[: -len(".lora_a")]
        b = T[base + ".lora_b"]  # (n_out, r); a is (r, n_in)
        s = scale * alpha / a.shape[0] if alpha > 0 else scale
        W[base] = W[base] + s * (b @ a)


def main():
    meta, W = load(sys.argv[1])
    args, n_ctx = sys.argv[2:], None
    while args[:1] in (["--n-ctx"], ["--lora"]):
        if args[0] == "--n-ctx":
            n_ctx, args = int(args[1]), args[2:]
        else:
            merge_lora(W, args[1], float(args[2]))
            args = args[3:]
    toks = [int(t) for t in args]
    for row in forward(meta, W, toks, n_ctx):
        print(" ".join("%.9g" % v for v in row))


if __name__ == "__main__":
    main()
