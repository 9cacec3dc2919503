#!/usr/bin/env python3
"""SentencePiece BPE (the "llama" tokenizer model of GGUF files) written from its
description, as an independent oracle for duet's tokenizer.c. Standard library only; it reads
the vocabulary (tokenizer.ggml.tokens / scores / token_type) with its own GGUF reader.

The algorithm, for text without special tokens:
  1. unless the file says tokenizer.ggml.add_space_prefix = false, a space is put in front
     of non-empty text; every space becomes U+2581;
  2. the text starts as one symbol per character; repeatedly, among adjacent pairs whose
     concatenation is a vocabulary entry, the pair with the highest score is merged, the
     leftmost on a tie (found by scanning all pairs each round, not with a priority queue);
  3. each final symbol is its vocabulary id, or, when it is not in the vocabulary, the ids of
     the byte tokens <0xXX> of its UTF-8 bytes.
A character that occurs in no vocabulary entry longer than one character can never merge, so
the text is cut at such characters (newlines in Llama's vocabulary) and the pieces encoded
on their own, with a cache of repeated pieces; this changes nothing but the speed.

Usage: spm_bpe.py VOCAB.gguf INPUT [SEPARATOR]
Reads INPUT as UTF-8; prints the ids (no BOS) of the whole text on one line, or with
SEPARATOR, of each part between SEPARATOR lines (llama.cpp's .inp format), one line each.
Exits with an error if the text contains a user-defined token's text (those are matched
before merging, which this oracle does not do).
"""
import sys

from gguf_read import read_header

USER_DEFINED = 4
NO_PAIR = float("-inf")  # the score of a pair that is no vocabulary entry


def read_vocab(path):
    with open(path, "rb") as f:
        _, _, meta = read_header(f.read(), "spm_bpe", path)
    if meta.get("tokenizer.ggml.model") != "llama":
        sys.exit("spm_bpe: %s is not a SentencePiece vocabulary" % path)
    return meta


class Spm:
    def __init__(self, meta):
        toks = meta["tokenizer.ggml.tokens"]
        self.scores = meta["tokenizer.ggml.scores"]
        types = meta.get("tokenizer.ggml.token_type", [1] * len(toks))
        self.ids = {}
        for i, t in enumerate(toks):
            self.ids[t] = i  # a later duplicate wins, as in llama.cpp's text -> id map
        self.bytes = {}
        for i, t in enumerate(toks):
            if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                self.bytes[int(t[3:5], 16)] = i
        self.user = [t for t, ty in zip(toks, types) if ty == USER_DEFINED]
        self.prefix = meta.get("tokenizer.ggml.add_space_prefix", True)
        self.mergeable = set()
        for t in toks:
            if len(t) > 1:
                self.mergeable.update(t)
        self.cache = {}

    def merge(self, chars):
        syms = list(chars)
        score = [self.pair(syms, k) for k in range(len(syms) - 1)]
        while score:
            best = max(range(len(score)), key=score.__getitem__)  # first (leftmost) maximum
            if score[best] == NO_PAIR:
                break
            syms[best:best + 2] = [syms[best] + syms[best + 1]]
            del score[best]
            if best < len(score):
                score[best] = self.pair(syms, best)
            if best > 0:
                score[best - 1] = self.pair(syms, best - 1)
        return syms

    def pair(self, syms, k):
        i = self.ids.get(syms[k] + syms[k + 1])
        return NO_PAIR if i is None else self.scores[i]

    def ids_of(self, piece):
        if piece not in self.cache:
            out = []
            for s in self.merge(piece):
                if s in self.ids:
                    out.append(self.ids[s])
                else:
                    out.extend(self.bytes[b] for b in s.encode("utf-8"))
            self.cache[piece] = out
        return self.cache[piece]

    def encode(self, text):
        for u in self.user:
            if u in text:
                sys.exit("spm_bpe: the text holds the user-defined token %r" % u)
        if not text:
            return []
        if self.prefix:
            text = " " + text
        text = text.replace(" ", "\u2581")
        out, start = [], 0
        for k, c in enumerate(text):
            if c not in self.mergeable:
                if k > start:
                    out.extend(self.ids_of(text[start:k]))
                out.extend(self.ids_of(c))
                start = k + 1
        if start < len(text):
            out.extend(self.ids_of(text[start:]))
        return out


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    spm = Spm(read_vocab(sys.argv[1]))
    with open(sys.argv[2], encoding="utf-8", newline="") as f:
        text = f.read()
    parts = [text]
    if len(sys.argv) == 4:
        sep = "\n" + sys.argv[3] + "\n"
        parts = text.split(sep)
        if text.endswith(sep):  # a trailing separator closes the last part
            parts.pop()
    for p in parts:
        sys.stdout.write(" ".join(str(i) for i in spm.encode(p)) + "\n")


if __name__ == "__main__":
    main()
