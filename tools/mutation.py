#!/usr/bin/env python3
"""Mutation testing: plant each bug of tests/mutations.txt in a scratch copy, one at a time, and
see whether the tests catch it.

A mutation is a small, plausible bug: a file, an exact text that must occur once in it, and its
replacement. Consecutive lines with the same id are one mutation of several edits (a loss and its
gradient changed together, say); the first line's layer, filters and reason stand for the group. For each one the scratch copy is rebuilt incrementally and the tests named by the
mutation's filters are run (the whole suite with --full). A mutation is killed when the tests fail,
crash or time out; it survives when they pass. A mutation that no longer applies (its text is gone
or ambiguous) or that does not compile is reported as broken: fix the list, since a broken
mutation measures nothing.

Usage: tools/mutation.py [--list FILE] [--full] [--only ID,...] [--min-rate PCT] [--keep]
Ends with the kill rate and the survivors; exits 1 when the rate is under --min-rate (95) or any
mutation is broken.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def unescape(s):
    # \t, \n and \\ let one TSV field hold a multi-line or tab-bearing text
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s) and s[i + 1] in "tn\\":
            out.append({"t": "\t", "n": "\n", "\\": "\\"}[s[i + 1]])
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def read_list(path):
    """Records: id, layer, file, find, replace, filters, why (tab-separated, # comments)."""
    muts = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.split("\t")
            if len(parts) != 7:
                sys.exit(f"{path}:{n}: expected 7 tab-separated fields, found {len(parts)}")
            mid, layer, file, find, repl, filters, why = parts
            edit = (file, unescape(find), unescape(repl))
            if muts and muts[-1]["id"] == mid:
                muts[-1]["edits"].append(edit)
                continue
            if any(m["id"] == mid for m in muts):
                sys.exit(f"{path}:{n}: mutation id {mid} is used again, not on the next line")
            muts.append(dict(id=mid, layer=layer, file=file, edits=[edit],
                             filters=filters.split(), why=why, where=f"{path}:{n}"))
    return muts


def copy_tree(dst):
    """The working tree's tracked and untracked-but-not-ignored files (what a commit would hold)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           check=True, capture_output=True).stdout.split(b"\0")
    for rel in files:
        if not rel:
            continue
        rel = rel.decode()
        src = os.path.join(ROOT, rel)
        if not os.path.isfile(src):
            continue
        os.makedirs(os.path.join(dst, os.path.dirname(rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dst, rel))


def run(cmd, cwd, env, timeout):
    try:
        p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                           timeout=timeout, errors="replace")
        return p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"") + (e.stderr or b"")
        return None, out.decode(errors="replace") if isinstance(out, bytes) else out


def build(scratch, env, jobs):
    return run(["make", f"-j{jobs}", "all"], scratch, env, 900)


def failing_tests(out):
    return [l.split()[1] for l in out.splitlines() if l.startswith("FAIL ")]


def test_cmd(m, full):
    return ["build/run_tests"] + ([] if full else m["filters"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--list", default=os.path.join(ROOT, "tests", "mutations.txt"))
    ap.add_argument("--full", action="store_true", help="run the whole suite for every mutation")
    ap.add_argument("--only", default="", help="comma-separated mutation ids")
    ap.add_argument("--min-rate", type=float, default=95.0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=600, help="seconds per test run")
    ap.add_argument("--keep", action="store_true", help="keep the scratch copy")
    ap.add_argument("--check", action="store_true",
                    help="only check that every edit applies once to the working tree")
    a = ap.parse_args()

    muts = read_list(a.list)
    if a.only:
        want = set(a.only.split(","))
        muts = [m for m in muts if m["id"] in want]
        if not muts:
            sys.exit(f"--only {a.only}: no such mutation")
    if a.check:
        bad = 0
        for m in muts:
            for file, find, _ in m["edits"]:
                try:
                    n = open(os.path.join(ROOT, file), encoding="utf-8").read().count(find)
                except OSError as e:
                    n = f"unreadable ({e.strerror})"
                if n != 1:
                    bad += 1
                    print(f"broken   {m['id']} ({m['where']}): {file}: text occurs {n} times")
        print(f"{len(muts)} mutations, {bad} edits that do not apply")
        return 1 if bad else 0
    scratch = tempfile.mkdtemp(prefix="duet-mutation-")
    env = dict(os.environ)
    shared = env.get("DUET_SHARED") or os.path.join(os.path.dirname(ROOT), "shared")
    if os.path.isdir(shared):
        env["DUET_SHARED"] = os.path.abspath(shared)
    else:
        print(f"note: {shared} not found: tests that need it skip, and the mutations they guard "
              "may survive", flush=True)
    env["DUET_BIN"] = "build/duet"
    t0 = time.time()
    try:
        copy_tree(scratch)
        print(f"scratch copy {scratch}; building ...", flush=True)
        rc, out = build(scratch, env, a.jobs)
        if rc != 0:
            print(out[-3000:])
            sys.exit("the unmutated scratch copy does not build")
        # Every filter set must select tests that pass unmutated, or a "kill" means nothing.
        sets = sorted({" ".join(test_cmd(m, a.full)) for m in muts})
        for s in sets:
            rc, out = run(s.split(), scratch, env, a.timeout)
            last = out.strip().splitlines()[-1] if out.strip() else ""
            if rc != 0 or last.startswith("0 passed"):
                print(out[-3000:])
                sys.exit(f"baseline: '{s}' does not pass unmutated ({last})")
        print(f"baseline passes ({len(sets)} test selections); {len(muts)} mutations", flush=True)

        killed, survived, broken = [], [], []
        for k, m in enumerate(muts, 1):
            tag = f"[{k}/{len(muts)}] {m['id']:<14} {m['layer']:<8}"
            originals, bad = {}, None
            for file, find, repl in m["edits"]:
                path = os.path.join(scratch, file)
                try:
                    cur = open(path, encoding="utf-8").read()  # earlier edits of the group included
                except OSError as e:
                    bad = f"cannot read {file}: {e.strerror}"
                    break
                originals.setdefault(path, cur)
                n = cur.count(find)
                if n != 1:
                    bad = f"the text occurs {n} times in {file}, not once: {find[:60]!r}"
                    break
                with open(path, "w", encoding="utf-8") as f:
                    f.write(cur.replace(find, repl))
            try:
                if bad:
                    broken.append((m, bad))
                    print(f"{tag} BROKEN   {bad}", flush=True)
                    continue
                rc, out = build(scratch, env, a.jobs)
                if rc != 0:
                    broken.append((m, "does not compile"))
                    print(f"{tag} BROKEN   does not compile", flush=True)
                    continue
                t1 = time.time()
                rc, out = run(test_cmd(m, a.full), scratch, env, a.timeout)
                dt = time.time() - t1
                if rc == 0:
                    survived.append(m)
                    print(f"{tag} SURVIVED {m['file']}: {m['why']} ({dt:.0f}s)", flush=True)
                else:
                    how = "timeout" if rc is None else (", ".join(failing_tests(out)) or
                                                        f"exit {rc}")
                    killed.append((m, how))
                    print(f"{tag} killed   by {how} ({dt:.0f}s)", flush=True)
            finally:
                for path, text in originals.items():
                    with open(path, "w", encoding="utf-8") as f:
                        f.write(text)
        live = len(killed) + len(survived)
        rate = 100.0 * len(killed) / live if live else 0.0
        print()
        print(f"{len(muts)} mutations: {len(killed)} killed, {len(survived)} survived, "
              f"{len(broken)} broken; kill rate {rate:.1f}% ({time.time() - t0:.0f}s)")
        for m in survived:
            print(f"survivor {m['id']} ({m['where']}): {m['file']}: {m['why']}")
        for m, why in broken:
            print(f"broken   {m['id']} ({m['where']}): {why}")
        by_layer = {}
        for m, _ in killed:
            by_layer.setdefault(m["layer"], [0, 0])[0] += 1
        for m in survived:
            by_layer.setdefault(m["layer"], [0, 0])[1] += 1
        print("by layer: " + ", ".join(f"{l} {k}/{k + s}" for l, (k, s) in sorted(by_layer.items())))
        return 0 if rate >= a.min_rate and not broken else 1
    finally:
        if a.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
