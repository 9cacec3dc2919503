#!/usr/bin/env python3
"""Hand-written pre-tokenizer splits, an independent oracle for the PCRE2 patterns of
src/text/tokenizer_bpe.c (standard library only; no regular expressions). Each split is a scanner
written from the pattern's documented meaning, trying the alternatives in order at each
position as a backtracking regex engine does:

  llama3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}
          | ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+
  qwen2:  the same with \\p{N} (single digits)
  gpt2:   see gpt2_bpe.split

Usage: bpe_split.py {llama3|qwen2|gpt2} INPUT SEPARATOR
Splits INPUT (UTF-8) at each SEPARATOR line (llama.cpp's .inp format) and prints, per part,
the byte offsets of the piece boundaries (0 first, the part's length last).
"""
import sys

from gpt2_bpe import is_letter, is_number, is_space, split as split_gpt2

NEWLINES = "\r\n"


def is_other(c):
    return not (is_space(c) or is_letter(c) or is_number(c))


def split_llama3(text, max_digits):
    out, i, n = [], 0, len(text)

    def run(j, pred, limit=None):
        k = j
        while k < n and pred(text[k]) and (limit is None or k - j < limit):
            k += 1
        return k

    while i < n:
        c = text[i]
        end = None
        # (?i:'s|'t|'re|'ve|'m|'ll|'d), ASCII letters of either case
        if c == "'":
            for suffix in ("s", "t", "re", "ve", "m", "ll", "d"):
                if text[i + 1:i + 1 + len(suffix)].lower() == suffix:
                    end = i + 1 + len(suffix)
                    break
        # [^\r\n\p{L}\p{N}]?\p{L}+
        if end is None:
            if is_letter(c):
                end = run(i, is_letter)
            elif c not in NEWLINES and not is_number(c) and i + 1 < n and is_letter(text[i + 1]):
                end = run(i + 1, is_letter)
        # \p{N}{1,max}
        if end is None and is_number(c):
            end = run(i, is_number, max_digits)
        # ' ?[^\s\p{L}\p{N}]+[\r\n]*'
        if end is None:
            j = i + 1 if c == " " and i + 1 < n and is_other(text[i + 1]) else i
            if is_other(text[j]):
                end = run(run(j, is_other), lambda ch: ch in NEWLINES)
        if end is None and is_space(c):
            k = run(i, is_space)
            last_nl = max((p for p in range(i, k) if text[p] in NEWLINES), default=None)
            if last_nl is not None:  # \s*[\r\n]+: through the run's last newline
                end = last_nl + 1
            elif k == n or k - i > 1:  # \s+(?!\S): all, or all but the last before \S
                end = k if k == n else k - 1
            else:  # \s+
                end = k
        if end is None:
            raise AssertionError("unclassified character %r" % c)
        out.append(text[i:end])
        i = end
    return out


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    kind = sys.argv[1]
    splitter = {"llama3": lambda t: split_llama3(t, 3), "qwen2": lambda t: split_llama3(t, 1),
                "gpt2": split_gpt2}[kind]
    with open(sys.argv[2], encoding="utf-8", newline="") as f:
        text = f.read()
    sep = "\n" + sys.argv[3] + "\n"
    parts = text.split(sep)
    if text.endswith(sep):
        parts.pop()
    for p in parts:
        cuts, o = [0], 0
        for piece in splitter(p):
            o += len(piece.encode("utf-8"))
            cuts.append(o)
        if not p:
            cuts = [0]
        sys.stdout.write(" ".join(str(c) for c in cuts) + "\n")


if __name__ == "__main__":
    main()
