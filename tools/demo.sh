#!/bin/sh
# tools/demo.sh DUET_BIN: Co-LLM on the embedded demo models (models/, made by `make models`;
# see tools/gen_demo_task.c for the task): a few held-out word problems answered by the jointly
# trained base with the expert, expert tokens highlighted on a terminal, then the held-out
# evaluation of every policy, then the knowledge update (new facts learned by a second LoRA
# adapter and the switch while base and expert stay frozen) before and after. Needs nothing
# outside the repository.
set -e
duet=${1:-build/duet}
m=${DUET_MODELS:-models}
n=${DEMO_N:-500}          # held-out problems in the table
threads=${DEMO_THREADS:-2}
un=${DEMO_UPDATE_N:-200}  # held-out problems per side in the knowledge-update table
for f in demo-base demo-expert demo-base.head demo-joint demo-joint.head demo-pre demo-joint-lora \
    demo-joint-lora.head demo-update demo-update.head; do
    if [ ! -r "$m/$f.gguf" ]; then
        echo "demo: $m/$f.gguf is missing (make models rebuilds the demo models)" >&2
        exit 1
    fi
done
data=$m/demo-heldout.jsonl
for f in "$data" "$m/demo-update-heldout.jsonl"; do
    [ -r "$f" ] || { echo "demo: $f is missing (make models writes it)" >&2; exit 1; }
done
work=build/demo-run
mkdir -p "$work"
base="$m/demo-base.gguf" expert="$m/demo-expert.gguf"
joint="$m/demo-joint.gguf"

echo "Task: word problems whose answer is a product a * b (a, b in 2..12)."
echo "  expert ($(du -k "$expert" | cut -f1) KiB): multiplication facts and the questions' language, never an answer"
echo "  base   ($(du -k "$base" | cut -f1) KiB): pre-trained on the format with random products, fine-tuned on"
echo "         problems over 40% of the number pairs"
echo "  joint  ($(du -k "$joint" | cut -f1) KiB): the same start, base and deferral head trained together on the"
echo "         same problems with Co-LLM's marginal likelihood (make models rebuilds all of them)"
echo "  LoRA   ($(du -k "$m/demo-joint-lora.gguf" | cut -f1) KiB of rank-8 adapters): the same objective with that start frozen,"
echo "         only the adapters and the deferral head learning"
echo
i=0
for line in 3 4 5; do
    q=$(sed -n "${line}p" "$data" | sed 's/^{"question": "\(.*\)", "answer".*$/\1/')
    ref=$(sed -n "${line}p" "$data" | sed 's/.*#### \([0-9]*\)"}$/\1/')
    prompt=$(printf 'Please solve the following math problem with detailed steps.\n\nQuestion: %s\nAnswer:' "$q")
    echo "== Question: $q   (reference $ref)"
    "$duet" run -m "$joint" --expert "$expert" --head "$m/demo-joint.head.gguf" -p "$prompt" \
        -n 48 --temp 0 --color --quiet -t "$threads" | sed -n '/^Answer:/,$p' | sed '1d'
    echo
done

echo "== Held-out evaluation: $n problems never seen in training (greedy, exact match)"
common="--expert $expert --task gsm8k --data $data --limit $n -n 40 -t $threads --quiet"
# joint Co-LLM first: random deferral is then run at its deferral frequency
"$duet" eval -m "$joint" --head "$m/demo-joint.head.gguf" --policy collm $common > "$work/joint.txt"
rate=$(awk '$1 == "collm" { for (i = 1; i <= NF; i++) if ($i ~ /%$/ && $(i-1) ~ /\//) { sub("%", "", $i); printf "%.4f", $i / 100 } }' "$work/joint.txt")
"$duet" eval -m "$m/demo-pre.gguf" --lora "$m/demo-joint-lora.gguf" --head "$m/demo-joint-lora.head.gguf" \
    --policy collm $common > "$work/lora.txt"
"$duet" eval -m "$base" --head "$m/demo-base.head.gguf" --policy base,expert,confidence,collm \
    $common > "$work/base.txt"
"$duet" eval -m "$base" --policy random --defer-rate "$rate" $common > "$work/random.txt"
sed -n 2p "$work/base.txt"
grep -E '^(base|expert|confidence) ' "$work/base.txt"
sed -n 's/^random      /random      /p' "$work/random.txt"
sed -n 's/^collm       /collm (head)/p' "$work/base.txt"
sed -n 's/^collm       /collm(joint)/p' "$work/joint.txt"
sed -n 's/^collm       /collm(LoRA) /p' "$work/lora.txt"
echo "(random defers at the joint model's frequency; collm (head) is a switch trained on the frozen"
echo " fine-tuned base over validation problems; collm(LoRA) is the joint objective with the base"
echo " frozen and rank-8 adapters learning, applied unmerged)"

echo
echo "== Knowledge update: facts that appear after the expert was trained, a * b with a in 13..15"
echo "   (b in 2..12; the expert never saw a factor above 12). Base and expert frozen: a second"
echo "   rank-8 adapter ($(du -k "$m/demo-update.gguf" | cut -f1) KiB) and the switch learned them from the LoRA system above, on"
echo "   new-fact problems mixed with old ones; $un held-out problems per side, greedy, exact match"
lora="-m $m/demo-pre.gguf --lora $m/demo-joint-lora.gguf"
upd="$lora --lora $m/demo-update.gguf --head $m/demo-update.head.gguf"
ucommon="--expert $expert --task gsm8k --limit $un -n 40 -t $threads --quiet --policy collm"
for side in new old; do
    d=$data
    [ $side = new ] && d=$m/demo-update-heldout.jsonl
    "$duet" eval $lora --head "$m/demo-joint-lora.head.gguf" --data "$d" $ucommon > "$work/before-$side.txt"
    "$duet" eval $upd --data "$d" $ucommon > "$work/after-$side.txt"
done
# accuracy, count and deferral of the collm row of each run
cells() { awk '$1 == "collm" { printf "%8s %-8s%9s   ", $4, $5, $6 }' "$work/$1-new.txt"
          awk '$1 == "collm" { printf "%8s %-8s%9s\n", $4, $5, $6 }' "$work/$1-old.txt"; }
printf '%-20s %-26s   %s\n' "" "new facts (13..15 x 2..12)" "old facts (2..12 x 2..12)"
printf '%-20s %-17s%9s   %-17s%9s\n' system accuracy deferral accuracy deferral
printf '%-20s ' "before: collm(LoRA)"; cells before
printf '%-20s ' "after: + update"; cells after
echo "(deferral: share of answer tokens the expert wrote; before is the collm(LoRA) system of the"
echo " table above, after the same with the update adapter stacked on it and the update's switch)"
