#!/bin/sh
# bench/babyllama.sh: learn the Co-LLM switch on the BabyLlama pair and measure it.
# Base tok105 (character vocabulary), expert tok361 (same characters + byte tokens), both
# converted from ../shared. Every step is a duet command; the data is produced here:
#   train  ~200k characters, validation ~30k, held-out ~50k, sampled from the EXPERT at
#   temperature 1 with fixed seeds (disjoint seed ranges), newlines folded to spaces and
#   characters outside tok105's vocabulary dropped (tok105 has no newline or byte pieces, so
#   they would all be <unk> for the base).
# Then: score both models on the training text, train each head variant, evaluate held-out
# NLL per byte at deferral rates 10..50% for every policy, tune the threshold of the selected
# head on the validation text. Writes bench/results/babyllama-DATE-COMMIT.md (+ JSON, CSV, SVG).
# Usage: sh bench/babyllama.sh [DUET_BIN] [WORKDIR]        (about 10-15 minutes on 2 cores)
#
# BABY_PRESETS="duet paper": instead of the head variants, train one head per
# `duet head train --preset P` on the same score files, evaluate them with base, expert and
# random on the same held-out text at the same rates, skip the validation text and tune.
# Writes bench/results/babyllama-presets-DATE-COMMIT.md (+ JSON).
# BABY_STORIES="TRAIN VAL HELDOUT" sets how many stories are sampled (default "800 120 200").
set -eu
DUET=${1:-build/duet}
W=${2:-/tmp/duet-babyllama}
SHARED=${DUET_SHARED:-../shared}
B=$SHARED/models/babyllama
[ -f "$B/tok105_model5000.bin" ] || { echo "babyllama: $B not found (needs ../shared)" >&2; exit 1; }
mkdir -p "$W" bench/results
stamp=$(date -u +%Y%m%d-%H%M%S)-$(git rev-parse --short HEAD 2>/dev/null || echo nogit)
PRESETS=${BABY_PRESETS:-}
set -- ${BABY_STORIES:-800 120 200}
N_TRAIN=$1 N_VAL=$2 N_HELD=$3
R=bench/results/babyllama-${PRESETS:+presets-}$stamp
T="-t ${THREADS:-2}"

"$DUET" convert --llama2c "$B/tok105_model5000.bin" --vocab "$B/tok105.vocab" -o "$W/base.gguf" >/dev/null
"$DUET" convert --llama2c "$B/tok361_model5000.bin" --vocab "$B/tok105.vocab" --byte-tokens -o "$W/expert.gguf" >/dev/null

# sample STORIES FIRST_SEED OUT: one story per seed from the expert, cleaned (see above);
# training text keeps one story per paragraph, eval text is one line.
sample() {
    n=$1; s0=$2; out=$3; : >"$out.raw"
    i=0
    while [ $i -lt "$n" ]; do
        "$DUET" run -m "$W/expert.gguf" -p "" -n 256 --temp 1 -s $((s0 + i)) -t 1 2>/dev/null >>"$out.raw"
        printf '\n\036\n' >>"$out.raw"
        i=$((i + 1))
    done
    python3 - "$B/tok105.vocab" "$out.raw" "$out" <<'PY'
import sys
chars = set()
for line in open(sys.argv[1], encoding="utf-8"):
    piece = line.split("\t")[0]
    if len(piece) == 1: chars.add(" " if piece == "\u2581" else piece)
raw = open(sys.argv[2], encoding="utf-8", errors="replace").read()
stories = []
for s in raw.split("\n\x1e\n"):
    s = " ".join(s.replace("\n", " ").split())
    s = "".join(ch for ch in s if ch in chars)
    if s: stories.append(s)
open(sys.argv[3], "w", encoding="utf-8").write("\n\n".join(stories) + "\n")
PY
}
echo "babyllama: sampling text from the expert" >&2
sample "$N_TRAIN" 1000000 "$W/train.txt"
[ -n "$PRESETS" ] || sample "$N_VAL" 2000000 "$W/val_para.txt"   # presets: no tune, no val
sample "$N_HELD" 3000000 "$W/heldout_para.txt"
# evaluation text: one stream (no newlines: tok105 would turn them into <unk>)
tr '\n' ' ' <"$W/heldout_para.txt" | tr -s ' ' >"$W/heldout.txt"
[ -n "$PRESETS" ] || tr '\n' ' ' <"$W/val_para.txt" | tr -s ' ' >"$W/val.txt"

echo "babyllama: scoring" >&2
"$DUET" score -m "$W/base.gguf" -d "$W/train.txt" -o "$W/train.base.scores" $T --quiet
"$DUET" score -m "$W/expert.gguf" -d "$W/train.txt" -o "$W/train.expert.scores" --tokenizer-of "$W/base.gguf" $T --quiet

train() { # NAME ARGS...
    name=$1; shift
    echo "babyllama: head $name" >&2
    "$DUET" head train --base-scores "$W/train.base.scores" --expert-scores "$W/train.expert.scores" \
        --base "$W/base.gguf" -o "$W/head-$name.gguf" --report "$W/head-$name.json" --quiet "$@"
}
if [ -n "$PRESETS" ]; then
    # the untrained start (u = mean output row) shows how far each schedule moves u
    "$DUET" head init --base "$W/base.gguf" -o "$W/head-init.gguf" >/dev/null
    HEADS="init"
    for p in $PRESETS; do train "preset-$p" --preset "$p"; HEADS="$HEADS preset-$p"; done
    BASELINES=base,expert,random
else
    HEADS="paper weak cost gain gain-feat paper-feat"
    train paper                                    # weak start + the paper's marginal likelihood
    train weak --objective weak                    # weak supervision only
    train cost --defer-cost 0.5                    # cost-aware marginal likelihood
    train gain --objective gain                    # regression onto the expert's gain
    train gain-feat --objective gain --features hidden,entropy,maxlogp
    train paper-feat --features hidden,entropy,maxlogp
    BASELINES=base,expert,random,uncertainty,confidence,oracle
fi

RATES=0.1,0.2,0.3,0.4,0.5
echo "babyllama: evaluating" >&2
"$DUET" eval -m "$W/base.gguf" --expert "$W/expert.gguf" --task nll --data "$W/heldout.txt" \
    --policy $BASELINES --defer-rate $RATES $T --quiet \
    --json "$W/eval-baselines.json" >/dev/null
for h in $HEADS; do
    "$DUET" eval -m "$W/base.gguf" --expert "$W/expert.gguf" --head "$W/head-$h.gguf" --task nll \
        --data "$W/heldout.txt" --policy collm --defer-rate $RATES $T --quiet \
        --json "$W/eval-$h.json" >/dev/null
done

SEL=${SELECT:-gain-feat}
if [ -z "$PRESETS" ]; then
    echo "babyllama: tuning head-$SEL on the validation text" >&2
    cp "$W/head-$SEL.gguf" "$W/head-tuned.gguf"
    "$DUET" tune -m "$W/base.gguf" --expert "$W/expert.gguf" --head "$W/head-tuned.gguf" --task nll \
        --data "$W/val.txt" -o "$R-tune" $T --quiet >/dev/null
fi
CMD="sh bench/babyllama.sh"     # the report names the switches that were set
[ -z "${BABY_STORIES:-}" ] || CMD="BABY_STORIES=\"$N_TRAIN $N_VAL $N_HELD\" $CMD"
[ -z "$PRESETS" ] || CMD="BABY_PRESETS=\"$PRESETS\" $CMD"

python3 - "$W" "$R" "$SEL" "$HEADS" "$CMD" "$N_TRAIN $N_HELD" <<'PY'
import json, sys, os
W, R, SEL, HEADS, CMD, SIZES = sys.argv[1:7]
heads = HEADS.split()
n_train, n_held = SIZES.split()
rows, fixed, base, expert = {}, {}, None, None
def load(path, label=None):
    global base, expert
    for r in json.load(open(path))["results"]:
        p = label if (label and r["policy"] == "collm") else r["policy"]
        if p == "base": base = r["value"]; continue
        if p == "expert": expert = r["value"]; continue
        if r["target_rate"] is None:   # not thresholded (confidence): its own frequency
            fixed[p] = (r["value"], r["deferral_frequency"]); continue
        rows.setdefault(p, {})[round(r["target_rate"], 2)] = (r["value"], r["deferral_frequency"])
load(f"{W}/eval-baselines.json")
for h in heads: load(f"{W}/eval-{h}.json", "collm " + h)
rates = [0.1, 0.2, 0.3, 0.4, 0.5]
out = [f"# BabyLlama pair: held-out NLL per byte by deferral rate\n",
       f"Base tok105 alone: {base:.4f}; expert tok361 alone: {expert:.4f} (nats per byte).",
       f"Gap closed = (base - nll) / (base - expert). Command: `{CMD}`.",
       f"Training text: {n_train} stories sampled from the expert; held-out text: {n_held} stories "
       f"({os.path.getsize(W + '/heldout.txt')} bytes).\n",
       "| policy | " + " | ".join(f"{int(r*100)}%" for r in rates) + " |",
       "|---|" + "---|" * len(rates)]
order = ["random", "uncertainty", "confidence"] + ["collm " + h for h in heads] + ["oracle"]
for p in order:
    if p not in rows: continue
    cells = []
    for r in rates:
        v, f = rows[p].get(r, (None, None))
        cells.append("-" if v is None else f"{v:.4f} ({100*(base-v)/(base-expert):.0f}%)")
    out.append(f"| {p} | " + " | ".join(cells) + " |")
for p, (v, f) in fixed.items():
    out.append(f"| {p} (own rate {100*f:.1f}%) | {v:.4f} ({100*(base-v)/(base-expert):.0f}%) |" + " |" * (len(rates) - 1))
if heads[-1].startswith("preset-"):
    out.append("\nCell: NLL/byte (share of the base-to-expert gap closed). Heads: init = "
               "`duet head init` (u = the mean of the base's output rows, untrained); preset-P = "
               "`duet head train --preset P --base base.gguf` on the same score files; random "
               "defers each token with probability equal to the rate, seed 0.\n")
else:
    out.append("\nCell: NLL/byte (share of the base-to-expert gap closed). Heads: paper = weak start + "
               "marginal likelihood; weak = weak supervision only; cost = marginal likelihood with "
               "--defer-cost 0.5; gain = regression onto the expert's log-prob gain; -feat = inputs "
               "hidden,entropy,maxlogp.\n")
    tune = json.load(open(f"{R}-tune.json"))
    out.append(f"## duet tune (head {SEL}, validation text)\n")
    out.append("```\n" + open(f"{R}-tune.csv").read().strip() + "\n```\n")
    out.append("Chosen: " + json.dumps({k: v for k, v in tune.items() if not isinstance(v, list)}))
for h in heads:
    if h == "init": continue   # duet head init writes no report
    rep = json.load(open(f"{W}/head-{h}.json"))
    keep = {k: v for k, v in rep.items() if not isinstance(v, (list, dict))}
    out.append(f"\nhead {h} report: " + json.dumps(keep))
open(R + ".md", "w").write("\n".join(out) + "\n")
json.dump(rows | {"base": base, "expert": expert}, open(R + ".json", "w"), indent=1)
print("\n".join(out[:len(order) + 8]))
PY
echo "babyllama: wrote $R.md" >&2
