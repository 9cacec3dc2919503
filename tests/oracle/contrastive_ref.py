#!/usr/bin/env python3
"""Contrastive decoding scores as the official Co-LLM code computes them (its generate.py,
read for the formula; written here from that reading), and the CD paper's plausibility rule,
in float64 numpy. Input file: int32 n, float32 alpha, float32 beta, then n float32 expert
logits and n float32 base logits. Prints three lines of n numbers (-inf where masked):
  cd:          log_softmax(expert) - log_softmax(base)   (no mask: its greedy path has none)
  cd_v2:       d = (1 + beta) * expert - beta * base on raw logits; d < log(alpha) + max(expert) -> -inf
  contrastive: d where expert >= log(alpha) + max(expert) (the CD paper's rule), else -inf
Usage: contrastive_ref.py FILE"""
import struct
import sys

import numpy as np


def log_softmax(x):
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def main():
    data = open(sys.argv[1], "rb").read()
    n, alpha, beta = struct.unpack_from("<iff", data, 0)
    se = np.frombuffer(data, "<f4", n, 12).astype(np.float64)
    sb = np.frombuffer(data, "<f4", n, 12 + 4 * n).astype(np.float64)
    cut = np.log(np.float64(alpha)) + se.max()
    cd = log_softmax(se) - log_softmax(sb)
    d = (1 + np.float64(beta)) * se - np.float64(beta) * sb
    cd_v2 = np.where(d < cut, -np.inf, d)
    plaus = np.where(se >= cut, d, -np.inf)
    for row in (cd, cd_v2, plaus):
        print(" ".join("%.9g" % v for v in row))


if __name__ == "__main__":
    main()
