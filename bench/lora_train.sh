#!/bin/sh
# bench/lora_train.sh [DUET_BIN]: LoRA training speed and memory on the TinyLlama-shaped 1.1B
# file against the same binary's prompt processing, measured in one run: per repetition,
# `duet bench -p 512 -n 0` (pp512) then `duet train lm --lora 16` for BENCH_STEPS steps of one
# 256-token sequence on text with no paragraph breaks (every position a loss token), under
# /usr/bin/time for the peak RSS. Prints the training tokens/s as a share of pp512 per
# repetition and the mean, and the peak RSS against the file size + 1 GiB. Writes
# bench/results/DATE-COMMIT-lora-train.csv.
#   BENCH_TYPES (default q4_0)  BENCH_REPS (3)  BENCH_THREADS (2)  BENCH_STEPS (4)
#   BENCH_TEXT: the training text (default: ../shared's tinyshakespeare, newlines folded)
set -e
. "$(dirname "$0")/side_by_side_lib.sh"
BENCH_TYPES=${BENCH_TYPES:-q4_0}
BENCH_REPS=${BENCH_REPS:-3}
sbs_start "${1:-build/duet}" lora-train
steps=${BENCH_STEPS:-4}
text=${BENCH_TEXT:-}
if [ -z "$text" ]; then
    src=${DUET_SHARED:-../shared}/data/tinyshakespeare/input.txt
    [ -f "$src" ] || { echo "lora_train: $src not found; set BENCH_TEXT" >&2; exit 1; }
    text=build/bench/lora-text.txt
    head -c 200000 "$src" | tr '\n' ' ' > "$text"
fi
{
    echo "# pp:    $duet bench -m MODEL -p 512 -n 0 -t $th -r 1 -o csv"
    echo "# train: /usr/bin/time -f %M $duet train lm -m MODEL -d $text --lora 16 --seq-len 256 --batch 1 --steps $steps --eval-seqs 1 --val-frac 0.01 -t $th --log LOG -o OUT"
    echo "type,rep,pp512_tok_s,train_tok_s,share,peak_rss_kb,file_kb,limit_kb,load"
} >> "$out.tmp"
sbs_models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for t in $types; do
    m=build/bench/tinyllama-$t.gguf
    file_kb=$(( $(stat -c %s "$m") / 1024 ))
    r=1
    while [ "$r" -le "$reps" ]; do
        l=$(cut -d' ' -f1 /proc/loadavg)
        pp=$("$duet" bench -m "$m" -p 512 -n 0 -t "$th" -r 1 -o csv | awk -F, 'NR > 1 && $5 ~ /^pp/ { print $6 }')
        /usr/bin/time -o "$tmp/rss" -f %M "$duet" train lm -m "$m" -d "$text" --lora 16 --seq-len 256 \
            --batch 1 --steps "$steps" --eval-seqs 1 --val-frac 0.01 -t "$th" --quiet \
            --log "$tmp/log.json" -o "$tmp/adapter.gguf"
        tr_tps=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["result"]["tokens_per_s"])' "$tmp/log.json")
        rss=$(tail -1 "$tmp/rss")
        awk -v t="$t" -v r="$r" -v pp="$pp" -v tr="$tr_tps" -v rss="$rss" -v f="$file_kb" -v l="$l" \
            'BEGIN { printf "%s,%d,%.2f,%.2f,%.4f,%d,%d,%d,%s\n", t, r, pp, tr, tr / pp, rss, f, f + 1048576, l }' >> "$out.tmp"
        r=$((r + 1))
    done
done
sbs_finish
awk -F, '/^#/ || $1 == "type" { next }
    { printf "%-7s rep %d: pp512 %7.2f tok/s, training %6.2f tok/s = %5.1f%%, peak RSS %d KB (limit %d KB), load %s\n",
          $1, $2, $3, $4, 100 * $5, $6, $8, $9; s[$1] += $5; n[$1]++; if ($6 > m[$1]) m[$1] = $6; lim[$1] = $8 }
    END { for (t in s) printf "%-7s mean share %.1f%% of pp512 (target >= 35%%); max peak RSS %d KB, file + 1 GiB %d KB\n",
          t, 100 * s[t] / n[t], m[t], lim[t] }' "$out"
