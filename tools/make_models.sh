#!/bin/sh
# tools/make_models.sh DUET_BIN GEN_BIN [OUTDIR]: trains the embedded demo models from seeds
# (`make models`). Every step is deterministic (fixed data seeds, fixed initialisation seeds, a
# trainer whose results do not depend on the thread count), so the files come out bit for bit
# the same as the committed ones under models/ on the same build.
#   expert      pre-trained on multiplication facts among random words (knows no task format)
#   base        fine-tuned from the untuned start on word problems over 40% of the number pairs:
#               the format, and the facts of its training pairs (it memorises them)
#   base.head   head-only Co-LLM: the switch trained on the frozen fine-tuned base (weak start,
#               then the marginal likelihood); on its own training data that base is right
#               everywhere, so this switch has little to learn
#   joint, joint.head  the paper's method: from the untuned start (the same seeded random
#               initialisation as the base), base and switch trained together on the same data
#               with the marginal likelihood, the switch starting from weak supervision (scored
#               with the untuned base, METHOD.md section 4)
set -e
duet=${1:-build/duet}
gen=${2:-build/gen_demo_task}
out=${3:-models}
work=build/demo
mkdir -p "$work" "$out"
rm -f "$work"/*.dsf "$work"/*.dsf.partial   # score files resume: start clean
q=--quiet
[ -t 2 ] && q=
shape="--n-vocab 512 --n-ctx 320 --n-head 4 --n-head-kv 2 --tied"

"$gen" "$work" 1
"$duet" make-model --n-embd 64 --n-layer 2 --n-head 4 --n-head-kv 2 --n-ff 192 --n-vocab 512 \
    --n-ctx 320 --tied --seed 12 -o "$work/untuned.gguf"

echo "== expert: multiplication facts (plain text)" >&2
"$duet" train lm $shape --n-embd 64 --n-layer 2 --n-ff 192 --init-seed 11 \
    -d "$work/expert_train.txt" -o "$work/expert.gguf" --name duet-demo-expert \
    --seq-len 64 --batch 16 --epochs 4 --lr 3e-3 --seed 1 $q \
    --log "$work/expert.train.json"

echo "== base: the word-problem format (JSONL, loss on answers)" >&2
"$duet" train lm -m "$work/untuned.gguf" -d "$work/base_train.jsonl" -o "$work/base.gguf" \
    --name duet-demo-base --seq-len 240 --batch 16 --epochs 10 --lr 3e-3 --seed 2 $q \
    --log "$work/base.train.json"

echo "== scores of the training data: untuned base, fine-tuned base, expert on the base's tokens" >&2
"$duet" score -m "$work/untuned.gguf" -d "$work/base_train.jsonl" -c 241 -o "$work/untuned.dsf" $q
"$duet" score -m "$work/base.gguf" -d "$work/base_train.jsonl" -c 241 -o "$work/base.dsf" $q
"$duet" score -m "$work/expert.gguf" --tokenizer-of "$work/base.gguf" -d "$work/base_train.jsonl" \
    -c 241 --no-hidden -o "$work/expert.dsf" $q

echo "== heads: weak supervision (untuned base), head-only Co-LLM (frozen fine-tuned base)" >&2
"$duet" train collm --weak-supervision --base-scores "$work/untuned.dsf" \
    --expert-scores "$work/expert.dsf" --head-out "$work/weak.head.gguf" $q
"$duet" head train --base-scores "$work/base.dsf" --expert-scores "$work/expert.dsf" \
    --base "$work/base.gguf" -o "$work/base.head.gguf" $q

echo "== joint Co-LLM: base and switch together from the untuned start and the weak head" >&2
"$duet" train collm -m "$work/untuned.gguf" -d "$work/base_train.jsonl" \
    --expert-scores "$work/expert.dsf" --head "$work/weak.head.gguf" \
    -o "$work/joint.gguf" --head-out "$work/joint.head.gguf" --name duet-demo-joint \
    --seq-len 240 --batch 16 --epochs 10 --lr 3e-3 --seed 2 $q \
    --log "$work/joint.train.json"

for f in expert base base.head joint joint.head; do cp "$work/$f.gguf" "$out/demo-$f.gguf"; done
cp "$work/heldout.jsonl" "$out/demo-heldout.jsonl"
ls -l "$out" >&2
