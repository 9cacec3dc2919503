#!/usr/bin/env python3
"""Independent reference for llama2.c checkpoints (numpy): reads the checkpoint and the
llama2.c tokenizer.bin directly (not duet's GGUF), encodes the prompt the way llama2.c's
run.c does (dummy prefix space, character lookup, byte fallback +3, greedy best-score
merges), and decodes greedily in float32, printing the generated token ids on one line.
Usage: llama2c_ref.py CKPT.bin TOKENIZER.bin PROMPT STEPS
STEPS counts positions as llama2.c's -n does (BOS + prompt tokens + generated < STEPS)."""
import struct
import sys

import numpy as np


def load_ckpt(path):
    data = open(path, "rb").read()
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq = struct.unpack("7i", data[:28])
    shared = vocab > 0
    vocab = abs(vocab)
    w = np.frombuffer(data, dtype=np.float32, offset=28)
    hs = dim // n_heads
    kv_dim = n_kv * hs
    o = 0

    def take(*shape):
        nonlocal o
        n = int(np.prod(shape))
        a = w[o:o + n].reshape(shape)
        o += n
        return a

    p = dict(dim=dim, hidden=hidden, n_layers=n_layers, n_heads=n_heads, n_kv=n_kv,
             vocab=vocab, seq=seq, hs=hs, kv_dim=kv_dim)
    p["tok"] = take(vocab, dim)
    p["rms_att"] = take(n_layers, dim)
    p["wq"] = take(n_layers, dim, dim)
    p["wk"] = take(n_layers, kv_dim, dim)
    p["wv"] = take(n_layers, kv_dim, dim)
    p["wo"] = take(n_layers, dim, dim)
    p["rms_ffn"] = take(n_layers, dim)
    p["w1"] = take(n_layers, hidden, dim)
    p["w2"] = take(n_layers, dim, hidden)
    p["w3"] = take(n_layers, hidden, dim)
    p["rms_final"] = take(dim)
    take(seq, hs // 2)
    take(seq, hs // 2)
    p["wcls"] = p["tok"] if shared else take(vocab, dim)
    return p


def load_tokenizer(path, vocab):
    data = open(path, "rb").read()
    o = 4
    pieces, scores = [], []
    for _ in range(vocab):
        s, n = struct.unpack("fi", data[o:o + 8])
        o += 8
        pieces.append(data[o:o + n])
        scores.append(s)
        o += n
    return pieces, scores


def encode(text, pieces, scores):
    lookup = {p: i for i, p in enumerate(pieces)}
    toks = [1]  # BOS
    if text:
        text = " " + text
    raw = text.encode("utf-8")
    i = 0
    while i < len(raw):  # one UTF-8 character at a time
        j = i + 1
        while j < len(raw) and (raw[j] & 0xC0) == 0x80 and j - i < 4:
            j += 1
        ch = raw[i:j]
        if ch in lookup:
            toks.append(lookup[ch])
        else:
            toks.extend(b + 3 for b in ch)
        i = j
    body = toks[1:]
    while True:
        best, bi, bid = -1e10, -1, -1
        for k in range(len(body) - 1):
            m = lookup.get(pieces[body[k]] + pieces[body[k + 1]])
            if m is not None and scores[m] > best:
                best, bi, bid = scores[m], k, m
        if bi < 0:
            break
        body[bi:bi + 2] = [bid]
    return [1] + body


def rmsnorm(x, w):
    ss = np.float32(np.mean(x.astype(np.float32) ** 2)) + np.float32(1e-5)
    return (w * (x * np.float32(1.0 / np.sqrt(ss)))).astype(np.float32)


def main():
    ckpt, tokpath, prompt, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    p = load_ckpt(ckpt)
    pieces, scores = load_tokenizer(tokpath, p["vocab"])
    toks = encode(prompt, pieces, scores)
    L, dim, hs, nh, nkv = p["n_layers"], p["dim"], p["hs"], p["n_heads"], p["n_kv"]
    kc = np.zeros((L, steps, p["kv_dim"]), np.float32)
    vc = np.zeros((L, steps, p["kv_dim"]), np.float32)
    i = np.arange(0, hs, 2)
    freq = (1.0 / np.power(np.float32(10000.0), (i / np.float32(hs)).astype(np.float32))).astype(np.float32)
    out = []
    token = toks[0]
    for pos in range(steps):
        x = p["tok"][token].copy()
        val = (np.float32(pos) * freq).astype(np.float32)
        c, s = np.cos(val).astype(np.float32), np.sin(val).astype(np.float32)
        for l in range(L):
            xb = rmsnorm(x, p["rms_att"][l])
            q = p["wq"][l] @ xb
            k = p["wk"][l] @ xb
            v = p["wv"][l] @ xb
            for vec, nheads in ((q, nh), (k, nkv)):
                r = vec.reshape(nheads, hs // 2, 2)
                a, b = r[:, :, 0].copy(), r[:, :, 1].copy()
                r[:, :, 0] = a * c - b * s
                r[:, :, 1] = a * s + b * c
            kc[l, pos] = k
            vc[l, pos] = v
            att = np.zeros(dim, np.float32)
            for h in range(nh):
                kh = h // (nh // nkv)
                qh = q[h * hs:(h + 1) * hs]
                keys = kc[l, :pos + 1, kh * hs:(kh + 1) * hs]
                sc = keys @ qh / np.float32(np.sqrt(hs))
                sc = np.exp(sc - sc.max())
                sc /= sc.sum()
                att[h * hs:(h + 1) * hs] = sc @ vc[l, :pos + 1, kh * hs:(kh + 1) * hs]
            x = x + p["wo"][l] @ att
            xb = rmsnorm(x, p["rms_ffn"][l])
            h1 = p["w1"][l] @ xb
            h3 = p["w3"][l] @ xb
            x = x + p["w2"][l] @ ((h1 / (np.float32(1) + np.exp(-h1))) * h3).astype(np.float32)
        logits = p["wcls"] @ rmsnorm(x, p["rms_final"])
        if pos + 1 < len(toks):
            token = toks[pos + 1]
            continue
        token = int(np.argmax(logits))
        if token == 1:
            break
        out.append(token)
    print(" ".join(str(t) for t in toks))
    print(" ".join(str(t) for t in out))


if __name__ == "__main__":
    main()
