#!/bin/sh
# bench/run.sh DUET_BIN: `make bench`. Writes the TinyLlama-shaped random models (n_embd 2048,
# 22 layers, 32 heads, 4 kv heads, n_ff 5632, vocab 32000) once under build/bench/, runs
# `duet bench` on each type with 1 and 2 threads, and writes a CSV under bench/results/
# named by date and commit, with the machine in its header comment lines.
set -e
duet=${1:-build/duet}
types=${BENCH_TYPES:-"q8_0 q4_0 q4_k_m"}
mkdir -p build/bench bench/results
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
out=bench/results/$(date +%Y%m%d-%H%M%S)-$commit.csv
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
{
    echo "# duet bench, commit $commit, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "# machine: $cpu, $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
    echo "# command: $duet bench -m build/bench/tinyllama-TYPE.gguf -p 512 -n 128 -t 1,2 -r 3 -o csv"
} > "$out.tmp"
first=1
for t in $types; do
    m=build/bench/tinyllama-$t.gguf
    [ -s "$m" ] || "$duet" make-model --n-embd 2048 --n-layer 22 --n-head 32 --n-head-kv 4 \
        --n-ff 5632 --n-vocab 32000 --type "$t" --seed 1 -o "$m"
    if [ $first = 1 ]; then
        "$duet" bench -m "$m" -p 512 -n 128 -t 1,2 -r 3 -o csv >> "$out.tmp"
        first=0
    else
        "$duet" bench -m "$m" -p 512 -n 128 -t 1,2 -r 3 -o csv | tail -n +2 >> "$out.tmp"
    fi
done
mv "$out.tmp" "$out"
cat "$out"
echo "wrote $out"
# Collaboration benchmark (bench/bench_collab.c): a Markdown table on the terminal, its CSV
# rows next to the CSV above.
cout=${out%.csv}-collab.csv
"$(dirname "$duet")/bench_collab" --csv "$cout.tmp"
mv "$cout.tmp" "$cout"
echo "wrote $cout"
