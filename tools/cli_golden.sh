#!/bin/sh
# tools/cli_golden.sh BIN OUTDIR      run a fixed list of deterministic CLI commands with BIN,
#                                     stdout of each into OUTDIR/NN-name.out
# tools/cli_golden.sh --compare A B   diff two such folders, name the commands that differ
#
# A golden-output check for changes that must not change behaviour (moving files, renaming,
# refactoring): run it with the binary before the change into one folder, with the binary
# after it into another, and compare. Every command is greedy or seeded and single-machine,
# so its output depends only on the code. Each .out file holds the command's stdout, then
# "rc=N" (its exit status); files a command writes (JSON, CSV, SVG, trace, GGUF) are added as
# their own .out files (text as is, binaries as a SHA-256).
#
# Commands (m/ = a copy of models/, the embedded demo; S = ../shared, used only when present;
# "(+file)" = what the command wrote is kept too, as NN-name-file.out or the next number):
#   01 duet --help                      02 duet --version
#   03 info m/demo-base.gguf            04 info m/demo-joint.head.gguf
#   05 tokenize -m demo-base -p Q --ids 06 tokenize -m demo-base -p Q (pieces)
#   07 run demo-base alone, --temp 0 -n 48 on a held-out question Q
#   08 run demo-joint + demo-expert + demo-joint.head (collm), --temp 0, --trace (09: the trace)
#   10 run demo-base + demo-expert + demo-base.head (collm), --temp 0
#   11 run demo-base + demo-expert --policy expert, --temp 0
#   12 run demo-base + demo-expert --policy random --random-rate 0.3 -s 7, --temp 0
#   13 run demo-base --temp 0.8 -s 42 (seeded sampling)
#   14 perplexity -m demo-base on the answers of 40 held-out problems
#   15 eval gsm8k, demo-joint + expert + head, policies base,expert,collm,random, 12 problems,
#      --json (16) and --outputs (17)
#   18 eval nll, demo-base + expert + head, --defer-rate 0.1,0.3, policies up to oracle, --json (19)
#   20 tune gsm8k on a copy of demo-base.head, 10 problems, portions 0,0.2,0.5: stdout, CSV (21),
#      JSON (22), SVG (23), info of the tuned head (24, +file)
#   25 score demo-base (+file) / 26 score demo-expert --tokenizer-of demo-base (+file), 60 problems
#   27 head init --base demo-base, stderr too (28: its info, +file)
#   29 head train --objective weak --epochs 2 --report (30: report, 31: info, +file)
#   32 head eval of demo-base.head on the two score files, stderr too (its table is there)
#   33 make-model llama, 2 layers, q8_0 tensors, seed 5 (34: info, 35: the file)
#   36 make-model qwen2 f16 --tied seed 9 (37: info, +file), 38 run it --temp 0 -n 16 --no-bos
#   39 convert --llama2c S/stories260K, stderr too (40: info, +file), 41 run it from BOS,
#      --temp 0 -n 200                                                                  [S]
#   42 convert BabyLlama tok105 (base, +file) and 43 tok361 --byte-tokens (expert, +file),
#      44 run the pair (vocabulary bridge) --policy random --random-rate 0.5 -s 3 --temp 0,
#      45 perplexity of the tok105 base on a fixed sentence                              [S]
#   46 duet bogus (unknown command: usage on stderr, rc=2), stderr too
#   47 train lm from demo-base on the 40 answers, 3 steps of 4 x 32 tokens (+file, 48: --log)
#   49 score demo-base / 50 score demo-expert --tokenizer-of demo-base on them, -c 33 (+file)
#   51 train collm from demo-base with those scores, 3 steps (+file, +head, 52: --log)
#
# Left out, and why: stderr of the commands not marked "stderr too" (load times, tok/s,
# progress, ETA); the tok/s column of the `eval` and `tune` tables, tune's CSV column
# tokens_per_second and every timing field of the JSON files (tokens_per_second, seconds,
# tokens_per_s, t_*): filtered out below; `bench` (it measures speed only); `serve` and `chat`
# (network or interactive; the tests cover them); long training runs (`make models` reproduces
# the demo models bit for bit instead). Paths never vary: every command runs inside
# OUTDIR/work with relative names, ../shared through a link there.
set -u

if [ "${1:-}" = "--compare" ]; then
    [ $# -eq 3 ] || { echo "usage: $0 --compare DIR_A DIR_B" >&2; exit 2; }
    a=$2 b=$3 bad=0 n=0
    for f in $({ (cd "$a" && ls -- *.out); (cd "$b" && ls -- *.out); } 2>/dev/null | sort -u); do
        n=$((n + 1))
        if [ ! -f "$a/$f" ] || [ ! -f "$b/$f" ]; then
            echo "only in one folder: $f"; bad=$((bad + 1))
        elif ! cmp -s "$a/$f" "$b/$f"; then
            echo "differs: $f"; diff "$a/$f" "$b/$f" | head -20; bad=$((bad + 1))
        fi
    done
    if [ "$bad" -eq 0 ]; then echo "cli_golden: all $n outputs identical"; exit 0; fi
    echo "cli_golden: $bad of $n outputs differ"
    exit 1
fi

[ $# -eq 2 ] || { echo "usage: $0 BIN OUTDIR | $0 --compare DIR_A DIR_B" >&2; exit 2; }
case $1 in /*) BIN=$1 ;; *) BIN=$(pwd)/$1 ;; esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${DUET_SHARED:-$ROOT/../shared}
mkdir -p "$2" || exit 1
OUT=$(cd "$2" && pwd)
rm -rf "$OUT/work" && rm -f "$OUT"/*.out
W=$OUT/work
mkdir -p "$W/m" && cp "$ROOT"/models/*.gguf "$ROOT"/models/demo-heldout.jsonl "$W/m/" || exit 1
cd "$W" || exit 1
T="-t 2"   # fixed: a reduction's order may follow the thread count

# run NN-name CMD...: stdout and the exit status into NN-name.out, stderr aside
run() {
    name=$1; shift
    "$@" >"$OUT/$name.out" 2>"$W/$name.err"
    echo "rc=$?" >>"$OUT/$name.out"
}
duet() { "$BIN" "$@"; }
# run2 NN-name CMD...: the same, then its stderr, for commands whose stderr holds no timing
run2() {
    name=$1; shift
    "$@" >"$OUT/$name.out" 2>"$W/$name.err"
    rc=$?
    { echo "--- stderr"; cat "$W/$name.err"; echo "rc=$rc"; } >>"$OUT/$name.out"
}
# keep NN-name FILE: a file a command wrote (text as is; binaries as a SHA-256)
keep() {
    if [ ! -f "$2" ]; then echo "missing $2" >"$OUT/$1.out"
    elif grep -qI . "$2" 2>/dev/null; then cp "$2" "$OUT/$1.out"
    else sha256sum <"$2" >"$OUT/$1.out"; fi
}
# timings vary run to run: the last column (tok/s) of eval/tune tables goes
no_tps() { sed -E 's/ +[0-9]+\.[0-9]((  <- chosen)?)$/\1/' "$OUT/$1.out" >"$OUT/$1.tmp" && mv "$OUT/$1.tmp" "$OUT/$1.out"; }
# and the tokens_per_second column of tune's CSV
no_tps_csv() {
    awk -F, -v OFS=, '{ if (NR == 1) for (i = 1; i <= NF; i++) if ($i == "tokens_per_second") c = i
                        if (c) { for (i = c; i < NF; i++) $i = $(i + 1); NF-- } print }' \
        "$OUT/$1.out" >"$OUT/$1.tmp" && mv "$OUT/$1.tmp" "$OUT/$1.out"
}
# and so do the JSON fields named t_..., ..._s or ...tok_per_s (python3: jansson's key order kept)
no_times_json() {
    [ -f "$OUT/$1.out" ] || return 0
    python3 - "$OUT/$1.out" <<'PY'
import json, re, sys
p = sys.argv[1]
try:
    d = json.load(open(p))
except ValueError:
    sys.exit(0)
timing = re.compile(r"^(t_.*|.*_s|.*per_second|seconds|elapsed.*)$")
def strip(x):
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items() if not timing.match(k)}
    if isinstance(x, list):
        return [strip(v) for v in x]
    return x
open(p, "w").write(json.dumps(strip(d), indent=1) + "\n")
PY
}

Q=$(sed -n 3p m/demo-heldout.jsonl | sed 's/^{"question": "\(.*\)", "answer".*$/\1/')
P=$(printf 'Please solve the following math problem with detailed steps.\n\nQuestion: %s\nAnswer:' "$Q")
head -n 12 m/demo-heldout.jsonl >val12.jsonl
head -n 10 m/demo-heldout.jsonl >val10.jsonl
head -n 60 m/demo-heldout.jsonl >train60.jsonl
sed -n '41,80p' m/demo-heldout.jsonl | sed 's/^.*"answer": "\(.*\)\\n#### .*$/\1/' >text40.txt

run 01-help duet --help
run 02-version duet --version
run 03-info-base duet info m/demo-base.gguf
run 04-info-head duet info m/demo-joint.head.gguf
run 05-tokenize-ids duet tokenize -m m/demo-base.gguf -p "$P" --ids
run 06-tokenize duet tokenize -m m/demo-base.gguf -p "$P"
run 07-run-base duet run -m m/demo-base.gguf -p "$P" -n 48 --temp 0 --quiet $T
run 08-run-joint duet run -m m/demo-joint.gguf --expert m/demo-expert.gguf \
    --head m/demo-joint.head.gguf -p "$P" -n 48 --temp 0 --quiet $T --trace trace.jsonl
keep 09-run-joint-trace trace.jsonl
run 10-run-base-head duet run -m m/demo-base.gguf --expert m/demo-expert.gguf \
    --head m/demo-base.head.gguf -p "$P" -n 48 --temp 0 --quiet $T
run 11-run-expert duet run -m m/demo-base.gguf --expert m/demo-expert.gguf --policy expert \
    -p "$P" -n 48 --temp 0 --quiet $T
run 12-run-random duet run -m m/demo-base.gguf --expert m/demo-expert.gguf --policy random \
    --random-rate 0.3 -s 7 -p "$P" -n 48 --temp 0 --quiet $T
run 13-run-sampled duet run -m m/demo-base.gguf -p "$P" -n 48 --temp 0.8 -s 42 --quiet $T
run 14-perplexity duet perplexity -m m/demo-base.gguf -f text40.txt --quiet $T
run 15-eval-gsm8k duet eval -m m/demo-joint.gguf --expert m/demo-expert.gguf \
    --head m/demo-joint.head.gguf --task gsm8k --data val12.jsonl \
    --policy base,expert,collm,random -n 40 $T --quiet --json eval.json --outputs outputs.jsonl
no_tps 15-eval-gsm8k
keep 16-eval-gsm8k-json eval.json && no_times_json 16-eval-gsm8k-json
keep 17-eval-gsm8k-outputs outputs.jsonl
run 18-eval-nll duet eval -m m/demo-base.gguf --expert m/demo-expert.gguf \
    --head m/demo-base.head.gguf --task nll --data text40.txt \
    --policy base,expert,collm,random,uncertainty,confidence,oracle --defer-rate 0.1,0.3 \
    $T --quiet --json evalnll.json
no_tps 18-eval-nll
keep 19-eval-nll-json evalnll.json && no_times_json 19-eval-nll-json
cp m/demo-base.head.gguf tuned.head.gguf
run 20-tune duet tune -m m/demo-base.gguf --expert m/demo-expert.gguf --head tuned.head.gguf \
    --task gsm8k --data val10.jsonl -o tune --portions 0,0.2,0.5 --calib 4 -n 40 $T --quiet
no_tps 20-tune
keep 21-tune-csv tune.csv && no_tps_csv 21-tune-csv
keep 22-tune-json tune.json && no_times_json 22-tune-json
keep 23-tune-svg tune.svg
run 24-tune-head-info duet info tuned.head.gguf
keep 24-tune-head-file tuned.head.gguf
run 25-score-base duet score -m m/demo-base.gguf -d train60.jsonl -o base.scores $T --quiet
keep 25-score-base-file base.scores
run 26-score-expert duet score -m m/demo-expert.gguf --tokenizer-of m/demo-base.gguf \
    -d train60.jsonl -o expert.scores $T --quiet
keep 26-score-expert-file expert.scores
run2 27-head-init duet head init --base m/demo-base.gguf -o init.head.gguf
run 28-head-init-info duet info init.head.gguf
keep 28-head-init-file init.head.gguf
run 29-head-train duet head train --base-scores base.scores --expert-scores expert.scores \
    --base m/demo-base.gguf --objective weak --epochs 2 -o trained.head.gguf \
    --report report.json --quiet
keep 30-head-train-report report.json && no_times_json 30-head-train-report
run 31-head-train-info duet info trained.head.gguf
keep 31-head-train-file trained.head.gguf
run2 32-head-eval duet head eval --base-scores base.scores --expert-scores expert.scores \
    --head m/demo-base.head.gguf --base m/demo-base.gguf
run 33-make-model duet make-model --n-embd 32 --n-layer 2 --n-head 4 --n-head-kv 2 --n-ff 64 \
    --n-vocab 300 --type q8_0 --seed 5 -o rand.gguf
run 34-make-model-info duet info rand.gguf
keep 35-make-model-file rand.gguf
run 36-make-model-qwen2 duet make-model --arch qwen2 --n-embd 64 --n-layer 1 --n-head 4 \
    --n-ff 96 --n-vocab 260 --type f16 --tied --seed 9 -o qwen.gguf
run 37-make-model-qwen2-info duet info qwen.gguf
keep 37-make-model-qwen2-file qwen.gguf
run 38-run-qwen2 duet run -m qwen.gguf -p "ab" --no-bos -n 16 --temp 0 --quiet $T

# ../shared through a link in work/, so no absolute path reaches an output
[ -d "$SHARED" ] && ln -s "$SHARED" shared
S=shared/models
if [ -f "$S/stories260K/stories260K.bin" ]; then
    run2 39-convert-stories duet convert --llama2c "$S/stories260K/stories260K.bin" \
        --tokenizer "$S/stories260K/tok512.bin" -o stories.gguf
    run 40-convert-stories-info duet info stories.gguf
    keep 40-convert-stories-file stories.gguf
    run 41-run-stories duet run -m stories.gguf -n 200 --temp 0 --quiet $T
else
    echo "cli_golden: $S/stories260K absent, commands 39-41 left out" >&2
fi
B=$S/babyllama
if [ -f "$B/tok105_model5000.bin" ]; then
    run2 42-convert-tok105 duet convert --llama2c "$B/tok105_model5000.bin" --vocab "$B/tok105.vocab" \
        -o bl-base.gguf
    run2 43-convert-tok361 duet convert --llama2c "$B/tok361_model5000.bin" --vocab "$B/tok105.vocab" \
        --byte-tokens -o bl-expert.gguf
    keep 42-convert-tok105-file bl-base.gguf
    keep 43-convert-tok361-file bl-expert.gguf
    run 44-run-bridge duet run -m bl-base.gguf --expert bl-expert.gguf --policy random \
        --random-rate 0.5 -s 3 -p "Once upon a time" -n 120 --temp 0 --quiet $T
    echo "Once upon a time there was a little girl named Lily. She liked to play in the park." >bl.txt
    run 45-perplexity-tok105 duet perplexity -m bl-base.gguf -f bl.txt --quiet $T
else
    echo "cli_golden: $B absent, commands 42-45 left out" >&2
fi
run2 46-unknown-command duet bogus
run 47-train-lm duet train lm -m m/demo-base.gguf -d text40.txt --steps 3 --seq-len 32 --batch 4 \
    $T -o lm.gguf --log lm.json --quiet
keep 47-train-lm-file lm.gguf
keep 48-train-lm-log lm.json && no_times_json 48-train-lm-log
run 49-score-base-c33 duet score -m m/demo-base.gguf -d text40.txt -c 33 -o b33.scores $T --quiet
keep 49-score-base-c33-file b33.scores
run 50-score-expert-c33 duet score -m m/demo-expert.gguf --tokenizer-of m/demo-base.gguf \
    -d text40.txt -c 33 -o e33.scores $T --quiet
keep 50-score-expert-c33-file e33.scores
run 51-train-collm duet train collm -m m/demo-base.gguf -d text40.txt --expert-scores e33.scores \
    --base-scores b33.scores --head-out jc.head.gguf --seq-len 32 --batch 4 --steps 3 $T \
    -o jc.gguf --log jc.json --quiet
keep 51-train-collm-file jc.gguf
keep 51-train-collm-head jc.head.gguf
keep 52-train-collm-log jc.json && no_times_json 52-train-collm-log
echo "cli_golden: $(ls "$OUT"/*.out | wc -l) outputs in $OUT"
