#!/usr/bin/env python3
"""List C functions longer than a limit (python3 standard library only).

    python3 tools/long_functions.py [LIMIT] [ROOT]   (LIMIT: lines, default 120;
                                                      ROOT: the repository, default: this file's)

Scans the .c files under src/ and cmd/ and prints one line per function definition whose body
spans more than LIMIT lines, longest first: "file:line: name length". A definition is found the
way house style writes it: a line starting in column 0 with a name followed by "(", whose
parameter list ends with "{" (a prototype ends with ";" and is skipped); its length runs from
that line to the "}" closing the body, counted by brace depth with comments, strings and
character literals ignored. Exit 0 always (a listing, not a check).
"""
import os
import re
import sys

HEAD = re.compile(r"^[A-Za-z_][\w\s\*]*?\b([A-Za-z_]\w*)\s*\(")
NOT_FUNCS = {"if", "for", "while", "switch", "return", "sizeof"}


def strip_code(text):
    """Text with comments, strings and char literals blanked, newlines kept (so lines match)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(c + re.sub(r"[^\n]", " ", text[i + 1:j - 1]) + c if j - i >= 2 else text[i:j])
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def functions(path):
    """(name, first line, length in lines) of each function defined in one file."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = strip_code(f.read()).split("\n")
    found, i = [], 0
    while i < len(lines):
        m = HEAD.match(lines[i])
        if not m or m.group(1) in NOT_FUNCS or lines[i].startswith(("typedef", "#")):
            i += 1
            continue
        # Walk to the first "{" or ";" after the name: "{" starts a body, ";" a prototype.
        j, col, depth, start = i, m.end(), 1, None     # m.end() is past the "("
        while j < len(lines) and start is None:
            for k in range(col, len(lines[j])):
                ch = lines[j][k]
                if ch == ";" and depth == 0:
                    start = -1
                    break
                if ch == "(":
                    depth += 1
                elif ch == ")":
                    depth -= 1
                elif ch == "{" and depth == 0:
                    start = (j, k)
                    break
                elif ch == "=" and depth == 0:
                    start = -1          # an initialised variable, not a function
                    break
            if start is None:
                j, col = j + 1, 0
        if start is None or start == -1:
            i += 1
            continue
        j, col, depth = start[0], start[1], 0
        while j < len(lines):
            end = None
            for k in range(col, len(lines[j])):
                if lines[j][k] == "{":
                    depth += 1
                elif lines[j][k] == "}":
                    depth -= 1
                    if depth == 0:
                        end = j
                        break
            if end is not None:
                break
            j, col = j + 1, 0
        found.append((m.group(1), i + 1, j - i + 1))
        i = j + 1
    return found


def main(argv):
    limit = int(argv[1]) if len(argv) > 1 else 120
    root = argv[2] if len(argv) > 2 else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows = []
    for top in ("src", "cmd"):
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, top)):
            dirnames.sort()
            for name in sorted(filenames):
                if name.endswith(".c"):
                    path = os.path.join(dirpath, name)
                    rel = os.path.relpath(path, root)
                    rows += [(n, rel, line, length) for n, line, length in functions(path)]
    rows = [r for r in rows if r[3] > limit]
    rows.sort(key=lambda r: (-r[3], r[1], r[2]))
    for name, rel, line, length in rows:
        print(f"{rel}:{line}: {name} {length}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
