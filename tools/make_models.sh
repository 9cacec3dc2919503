#!/bin/sh
# tools/make_models.sh DUET_BIN GEN_BIN [OUTDIR]: trains the embedded demo models from seeds
# (`make models`). Every step is deterministic (fixed data seeds, fixed initialisation seeds, a
# trainer whose results do not depend on the thread count), so the files come out bit for bit
# the same as the committed ones under models/ on the same build. The task and its data:
# tools/gen_demo_task.c.
#   expert      pre-trained on multiplication facts (at line starts and after random words)
#               among task questions (knows the facts and the questions' language, never saw
#               an answer)
#   pretrained  the base's "pre-training": the problems' format over all number pairs with
#               every product replaced by a random number (reads, copies, lays out; no facts)
#   base        pretrained, fine-tuned on the training problems (40% of the pairs): the
#               "base alone" of the paper's comparison; it memorises its training facts
#   base.head   head-only Co-LLM: a switch trained on the frozen base (weak start, then the
#               marginal likelihood) on the validation problems (all number pairs): on its
#               own training problems the base knows every product, so no token there tells
#               a frozen-base switch when the expert is worth asking
#   joint, joint.head  the paper's method: from pretrained, base and switch trained together
#               on the same training problems (marginal likelihood), the switch starting from
#               weak supervision scored with pretrained (docs/method.md sections 4-5)
#   pre, joint-lora, joint-lora.head  the same objective with the base frozen: rank-8 LoRA
#               adapters on pretrained (kept as demo-pre) and the switch learn together
#   update, update.head  a knowledge update of that LoRA system: facts that appear after the
#               expert was trained (13..15 x 2..12, update_train.jsonl). Base (pretrained with
#               the joint-lora adapter, merged only to train on it) and expert stay frozen; a
#               second rank-8 adapter and the switch (from joint-lora.head) learn the joint
#               objective on new-fact problems mixed with old ones, so that the switch keeps
#               asking the expert for the facts it knows and stops asking for those it does
#               not. At inference the update stacks, unmerged, on demo-pre with demo-joint-lora.
set -e
duet=${1:-build/duet}
gen=${2:-build/gen_demo_task}
out=${3:-models}
work=${DEMO_WORK:-build/demo}
mkdir -p "$work" "$out"
rm -f "$work"/*.dsf "$work"/*.dsf.partial   # score files resume: start clean
q=--quiet
[ -t 2 ] && q=
sft="--seq-len 240 --batch 16"

"$gen" "$work" 1 --new-facts
"$duet" make-model --n-embd 64 --n-layer 2 --n-head 4 --n-head-kv 2 --n-ff 192 --n-vocab 512 \
    --n-ctx 320 --tied --seed 12 -o "$work/untuned.gguf"

echo "== expert: multiplication facts (plain text)" >&2
"$duet" train lm --n-embd 64 --n-layer 2 --n-head 4 --n-head-kv 2 --n-ff 192 --n-vocab 512 \
    --n-ctx 320 --tied --init-seed 11 -d "$work/expert_train.txt" -o "$work/expert.gguf" \
    --name duet-demo-expert --seq-len 240 --batch 16 --epochs 12 --lr 3e-3 --seed 1 $q

echo "== base: pre-training on the format (random products), then the training problems" >&2
"$duet" train lm -m "$work/untuned.gguf" -d "$work/base_pretrain.jsonl" -o "$work/pre.gguf" \
    --name duet-demo-pretrained $sft --epochs 8 --lr 3e-3 --seed 4 $q
"$duet" train lm -m "$work/pre.gguf" -d "$work/base_train.jsonl" -o "$work/base.gguf" \
    --name duet-demo-base $sft --epochs 3 --lr 1e-3 --seed 2 $q

echo "== scores: pretrained and expert on the training problems, base and expert on validation" >&2
"$duet" score -m "$work/pre.gguf" -d "$work/base_train.jsonl" -c 241 -o "$work/pre.dsf" $q
"$duet" score -m "$work/expert.gguf" --tokenizer-of "$work/pre.gguf" -d "$work/base_train.jsonl" \
    -c 241 --no-hidden -o "$work/expert.dsf" $q
"$duet" score -m "$work/base.gguf" -d "$work/val.jsonl" -c 241 -o "$work/base_val.dsf" $q
"$duet" score -m "$work/expert.gguf" --tokenizer-of "$work/base.gguf" -d "$work/val.jsonl" \
    -c 241 --no-hidden -o "$work/expert_val.dsf" $q

echo "== switches: weak supervision (pretrained), head-only Co-LLM (frozen base, validation)" >&2
"$duet" train collm --weak-supervision-head --base-scores "$work/pre.dsf" \
    --expert-scores "$work/expert.dsf" --head-out "$work/weak.head.gguf" $q
"$duet" head train --base-scores "$work/base_val.dsf" --expert-scores "$work/expert_val.dsf" \
    --base "$work/base.gguf" -o "$work/base.head.gguf" $q

echo "== joint Co-LLM: base and switch together from pretrained and the weak switch" >&2
"$duet" train collm -m "$work/pre.gguf" -d "$work/base_train.jsonl" \
    --expert-scores "$work/expert.dsf" --head "$work/weak.head.gguf" \
    -o "$work/joint.gguf" --head-out "$work/joint.head.gguf" --name duet-demo-joint \
    $sft --epochs 3 --lr 1e-3 --seed 2 $q

echo "== joint Co-LLM with LoRA: rank-8 adapters and the switch on the frozen pretrained base" >&2
"$duet" train collm -m "$work/pre.gguf" --lora 8 --lora-alpha 16 -d "$work/base_train.jsonl" \
    --expert-scores "$work/expert.dsf" --head "$work/weak.head.gguf" \
    -o "$work/joint-lora.gguf" --head-out "$work/joint-lora.head.gguf" \
    --name duet-demo-joint-lora $sft --epochs 3 --lr 3e-3 --seed 2 $q

echo "== knowledge update: a second adapter and the switch on the frozen LoRA system, new facts" >&2
"$duet" lora merge -m "$work/pre.gguf" --lora "$work/joint-lora.gguf" -o "$work/pre-lora.gguf"
"$duet" score -m "$work/expert.gguf" --tokenizer-of "$work/pre-lora.gguf" \
    -d "$work/update_train.jsonl" -c 241 --no-hidden -o "$work/update_expert.dsf" $q
"$duet" train collm -m "$work/pre-lora.gguf" --lora 8 --lora-alpha 16 -d "$work/update_train.jsonl" \
    --expert-scores "$work/update_expert.dsf" --head "$work/joint-lora.head.gguf" \
    -o "$work/update.gguf" --head-out "$work/update.head.gguf" \
    --name duet-demo-update $sft --epochs 4 --lr 1e-2 --seed 2 $q

for f in expert base base.head joint joint.head pre joint-lora joint-lora.head update update.head; do
    cp "$work/$f.gguf" "$out/demo-$f.gguf"
done
cp "$work/heldout.jsonl" "$out/demo-heldout.jsonl"
cp "$work/update_heldout.jsonl" "$out/demo-update-heldout.jsonl"
ls -l "$out" >&2
