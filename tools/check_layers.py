#!/usr/bin/env python3
"""Check that includes point down the library's layers (python3 standard library only).

    python3 tools/check_layers.py [ROOT]      (ROOT: the repository, default: this file's)

Every #include "..." in src/, cmd/ and include/ is resolved to a file of the tree and both ends
are given a layer: src/LAYER/... is LAYER, cmd/ is cmd, include/duet.h is api. Ranks, lowest
first:

    api < base < format < {engine, text} < collab < {learn, train, serve} < cmd

A file may include its own layer and any lower rank. Layers of one rank may not include each
other, except along the edges listed in ALLOWED. The command-line tool uses the library as any
program would: a file of cmd/ may include only include/duet.h and cmd's own headers, never a
header of src/ (what it needs from the library is declared in duet.h). Also refused: an include that resolves to no
file of the tree (library files spell includes from src/: "engine/model.h", not "model.h"),
a file under src/ outside the known layers, and two modules that include each other's headers
(a.c or a.h includes b.h while b.c or b.h includes a.h), even inside one layer; a module is a
.c with its .h, and X_impl.h belongs to module X.

Exit 0 when clean; 1 with one line per violation (file:line: the include and the rule it
breaks); 2 on a usage error.
"""
import os
import re
import sys

RANK = {"api": 0, "base": 1, "format": 2, "engine": 3, "text": 3, "collab": 4,
        "learn": 5, "train": 5, "serve": 5, "cmd": 6}

# Includes between layers of one rank, by direction, with the reason each is needed.
ALLOWED = {
    ("engine", "text"): "a model owns its tokenizer: engine/model.h embeds it and "
                        "engine/model.c loads it from the GGUF",
    ("train", "learn"): "the LM trainer trains over the scorer's sequences (learn/scores.h) "
                        "and writes its log with learn/eval.h's atomic JSON writer",
}

# Single includes that break a rule, kept on purpose: (file, include) -> reason. Empty: keep
# it that way by moving a declaration to the layer that owns it instead.
EXCEPTIONS = {}

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def layer_of(rel):
    parts = rel.split("/")
    if parts[0] == "src":
        return parts[1] if len(parts) > 2 else None
    if parts[0] == "cmd":
        return "cmd"
    if parts[0] == "include":
        return "api"
    return None


def resolve(root, rel, name):
    """The tree path an include names (as the compiler finds it with -Iinclude -Isrc), or None.
    Library files resolve from src/ and include/ only, so a bare "model.h" is an error there."""
    here = os.path.dirname(rel)
    bases = ["include", "src"] if rel.startswith("src/") else [here, "include", "src"]
    for b in bases:
        cand = os.path.normpath(os.path.join(b, name))
        if os.path.isfile(os.path.join(root, cand)):
            return cand.replace(os.sep, "/")
    return None


def module_of(path):
    """src/engine/model.c and src/engine/model.h are one module, src/engine/model; a private
    header X_impl.h belongs to module X (text/tokenizer_impl.h extends text/tokenizer.h)."""
    stem = os.path.splitext(path)[0]
    return stem[:-len("_impl")] if stem.endswith("_impl") else stem


def scan(root):
    files = []
    for top in ("src", "cmd", "include"):
        for d, _, names in os.walk(os.path.join(root, top)):
            for n in sorted(names):
                if n.endswith((".c", ".h")):
                    files.append(os.path.relpath(os.path.join(d, n), root).replace(os.sep, "/"))
    return sorted(files)


def check(root):
    bad = []
    edges = {}  # (module, included header's module) -> first (file, line, include)
    for rel in scan(root):
        src_layer = layer_of(rel)
        if src_layer not in RANK:
            folders = ",".join(sorted(set(RANK) - {"api", "cmd"}))
            bad.append(f"{rel}: not in a known layer folder (src/{{{folders}}}/)")
            continue
        with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as f:
            lines = f.read().split("\n")
        for ln, text in enumerate(lines, 1):
            m = INCLUDE.match(text)
            if not m:
                continue
            name = m.group(1)
            where = f'{rel}:{ln}: #include "{name}"'
            if (rel, name) in EXCEPTIONS:
                continue
            target = resolve(root, rel, name)
            if target is None:
                bad.append(f"{where}: resolves to no file of the tree "
                           "(library includes are spelled from src/, e.g. \"engine/model.h\")")
                continue
            dst_layer = layer_of(target)
            if dst_layer not in RANK:
                bad.append(f"{where}: {target} is in no known layer")
                continue
            if target.endswith(".h") and module_of(target) != module_of(rel):
                edges.setdefault((module_of(rel), module_of(target)), where)
            if dst_layer == src_layer:
                continue
            if src_layer == "cmd" and dst_layer != "api":
                bad.append(f"{where}: cmd reaches past the public API ({target}); the CLI "
                           "includes only include/duet.h and its own headers, so declare what "
                           "it needs in duet.h")
                continue
            rs, rd = RANK[src_layer], RANK[dst_layer]
            if rd > rs:
                bad.append(f"{where}: upward include, {src_layer} (rank {rs}) -> "
                           f"{dst_layer} (rank {rd})")
            elif rd == rs and (src_layer, dst_layer) not in ALLOWED:
                bad.append(f"{where}: sideways include, {src_layer} -> {dst_layer} (same rank; "
                           "not an allowed edge of tools/check_layers.py)")
    for (a, b), where in sorted(edges.items()):
        if a < b and (b, a) in edges:
            bad.append(f"{where}: {a} and {b} include each other's headers "
                       f"(and {edges[(b, a)]})")
    return bad


def main(argv):
    if len(argv) > 2 or (len(argv) == 2 and argv[1].startswith("-")):
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    here = os.path.dirname(os.path.abspath(__file__))
    root = argv[1] if len(argv) == 2 else os.path.dirname(here)
    if not os.path.isdir(os.path.join(root, "src")):
        print(f"check_layers: {root}/src not found", file=sys.stderr)
        return 2
    bad = check(root)
    for line in bad:
        print(line)
    if bad:
        print(f"check_layers: {len(bad)} violation(s)")
        return 1
    print(f"check_layers: {len(scan(root))} files, includes point down")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
