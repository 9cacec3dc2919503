#!/usr/bin/env python3
"""GPT-2 byte-level BPE written from its description, as an independent oracle for duet's
tokenizer_bpe.c. Standard library only; shares no code or data path with the C side: it reads
OpenAI's encoder.json (text -> id) and vocab.bpe (merges, best first), not a GGUF file, splits
with a hand-written scanner instead of a regex engine, and merges the way GPT-2's encoder did
(repeatedly merge every occurrence of the lowest-ranked adjacent pair) rather than with a
priority queue.

Usage: gpt2_bpe.py ENCODER_JSON VOCAB_BPE INPUT [SEPARATOR]
Reads INPUT as UTF-8; without SEPARATOR prints the ids of the whole text on one line; with
one, splits INPUT at each SEPARATOR line (llama.cpp's .inp format) and prints one line of
ids per part.
"""
import json
import sys
import unicodedata

# Unicode White_Space (what the reference regex engines mean by \s)
WHITESPACE = set("\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | {
    chr(c) for c in range(0x2000, 0x200B)}


def byte_chars():
    """Byte -> printable character: printable Latin-1 bytes stand for themselves, the other
    68 bytes take U+0100, U+0101, ... in byte order."""
    printable = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def is_letter(c):
    return unicodedata.category(c).startswith("L")


def is_number(c):
    return unicodedata.category(c).startswith("N")


def is_space(c):
    return c in WHITESPACE


def split(text):
    """GPT-2's pre-tokenizer: 's|'t|'re|'ve|'m|'ll|'d| ?L+| ?N+| ?[^\\s L N]+|\\s+(?!\\S)|\\s+
    tried in that order at each position (first alternative that matches wins)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c == "'":
            for suffix in ("s", "t", "re", "ve", "m", "ll", "d"):
                if text.startswith(suffix, i + 1):
                    out.append(text[i:i + 1 + len(suffix)])
                    i += 1 + len(suffix)
                    break
            else:
                suffix = None
            if suffix:
                continue
        j = i + 1 if c == " " and i + 1 < n else i
        head = text[j] if j < n else ""
        for cls in (is_letter, is_number,
                    lambda ch: not (is_space(ch) or is_letter(ch) or is_number(ch))):
            if head and cls(head):
                k = j
                while k < n and cls(text[k]):
                    k += 1
                out.append(text[i:k])
                i = k
                break
        else:
            # whitespace: the whole run, less its last character when a non-space follows
            k = i
            while k < n and is_space(text[k]):
                k += 1
            if k == i:  # unreachable: every character falls in one class above
                raise AssertionError("unclassified character %r" % c)
            if k < n and k - i > 1:
                k -= 1
            out.append(text[i:k])
            i = k
    return out


class Encoder:
    def __init__(self, encoder_json, vocab_bpe):
        with open(encoder_json, encoding="utf-8") as f:
            self.encoder = json.load(f)
        with open(vocab_bpe, encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(l.split(" ")) for l in lines[1:] if l]
        self.ranks = {m: r for r, m in reversed(list(enumerate(merges)))}
        self.chars = byte_chars()
        self.cache = {}

    def bpe(self, word):
        if word in self.cache:
            return self.cache[word]
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get(p, None), p) for p in zip(parts, parts[1:])]
            ranked = [rp for rp in pairs if rp[0] is not None]
            if not ranked:
                break
            best = min(ranked)[1]
            merged, k = [], 0
            while k < len(parts):
                if k + 1 < len(parts) and (parts[k], parts[k + 1]) == best:
                    merged.append(parts[k] + parts[k + 1])
                    k += 2
                else:
                    merged.append(parts[k])
                    k += 1
            parts = merged
        self.cache[word] = parts
        return parts

    def encode(self, text):
        ids = []
        for piece in split(text):
            word = "".join(self.chars[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[p] for p in self.bpe(word))
        return ids


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    enc = Encoder(sys.argv[1], sys.argv[2])
    with open(sys.argv[3], encoding="utf-8", newline="") as f:
        text = f.read()
    parts = [text]
    if len(sys.argv) == 5:
        sep = "\n" + sys.argv[4] + "\n"
        parts = text.split(sep)
        if text.endswith(sep):  # a trailing separator closes the last part
            parts.pop()
    out = sys.stdout
    for p in parts:
        out.write(" ".join(str(i) for i in enc.encode(p)) + "\n")


if __name__ == "__main__":
    main()
