#!/bin/sh
# bench/side_by_side.sh LLAMA_BENCH [DUET_BIN]: duet bench and llama.cpp's llama-bench on the
# same GGUF files in one run, interleaved (this machine is shared and its speed drifts from
# minute to minute): for each repetition and type, one duet run and one llama-bench run of
# pp512 + tg128 at 2 threads, alternating which goes first. LLAMA_BENCH is a llama-bench
# binary built outside the repository (this script does not build it). Writes the raw
# per-run figures to bench/results/DATE-COMMIT-side-by-side.csv and prints mean ± sd and
# the ratio duet / llama.cpp per type and test.
# Settings and models: bench/side_by_side_lib.sh.
set -e
lb=${1:?usage: bench/side_by_side.sh LLAMA_BENCH [DUET_BIN]}
. "$(dirname "$0")/side_by_side_lib.sh"
sbs_start "${2:-build/duet}" side-by-side
{
    echo "# duet:      $duet bench -m MODEL -p 512 -n 128 -t $th -r 1 -o csv"
    echo "# llama.cpp: $lb -m MODEL -p 512 -n 128 -t $th -r 1 -mmp 0 -o csv"
    echo "engine,type,rep,test,tps,share_of_limit,limit_tps"
} >> "$out.tmp"
sbs_models
run_duet() { # type rep
    "$duet" bench -m "build/bench/tinyllama-$1.gguf" -p 512 -n 128 -t "$th" -r 1 -o csv |
        awk -F, -v t="$1" -v r="$2" 'NR > 1 { print "duet," t "," r "," $5 "," $6 "," $9 "," $8 }' >> "$out.tmp"
}
run_llama() { # type rep
    "$lb" -m "build/bench/tinyllama-$1.gguf" -p 512 -n 128 -t "$th" -r 1 -mmp 0 -o csv 2>/dev/null |
        awk -F, -v t="$1" -v r="$2" 'NR == 1 { for (i = 1; i <= NF; i++) { h = $i; gsub(/"/, "", h); c[h] = i } next }
            { p = $c["n_prompt"]; g = $c["n_gen"]; gsub(/"/, "", p); gsub(/"/, "", g); s = $c["avg_ts"]; gsub(/"/, "", s)
              print "llama.cpp," t "," r "," (p > 0 ? "pp" p : "tg" g) "," s ",," }' >> "$out.tmp"
}
sbs_interleave run_duet run_llama
sbs_finish
# Summary: mean ± sd per engine, type and test, and the ratio of the means.
echo "| type | test | duet t/s | llama.cpp t/s | ratio | duet share of limit (tg: bandwidth, pp: FP32 FMA peak) |"
echo "| --- | --- | ---: | ---: | ---: | ---: |"
awk -F, '/^#/ || $1 == "engine" { next }
    { k = $2 "," $4; n[$1 "," k]++; s[$1 "," k] += $5; q[$1 "," k] += $5 * $5; keys[k] = 1
      if ($6 != "" && $6 > 0) { bw[k] += $6; nb[k]++ } }
    END {
      for (k in keys) {
        split(k, a, ",")
        for (e = 0; e < 2; e++) {
          id = (e ? "llama.cpp" : "duet") "," k; c = n[id]; m[e] = c ? s[id] / c : 0
          sd[e] = c > 1 ? sqrt((q[id] - s[id] * s[id] / c) / (c - 1)) : 0
        }
        ratio = 0
        if (m[1] > 0) ratio = m[0] / m[1]
        share = "-"
        if (nb[k] > 0) share = sprintf("%.0f%%", 100 * bw[k] / nb[k])
        printf "| %s | %s | %.2f ± %.2f | %.2f ± %.2f | %.2fx | %s |\n", a[1], a[2], m[0], sd[0], m[1], sd[1], ratio, share
      }
    }' "$out" | sort
# Generation per repetition: the host's memory bandwidth changes from minute to minute (34 to
# 60+ GB/s measured on one VM in one hour), and the ratio with it; limit_tps is duet's
# tokens/s at the bandwidth measured around its run (bench's probe), showing which state
# each pair of runs met.
echo
echo "| type | rep | duet tg t/s | llama.cpp tg t/s | ratio | duet limit t/s |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
awk -F, '/^#/ || $1 == "engine" || $4 !~ /^tg/ { next }
    { k = $2 "," $3; if ($1 == "duet") { d[k] = $5; lim[k] = $7 } else l[k] = $5 }
    END { for (k in d) if (l[k] > 0) { split(k, a, ",")
        printf "| %s | %s | %.2f | %.2f | %.2fx | %.1f |\n", a[1], a[2], d[k], l[k], d[k] / l[k], lim[k] } }' "$out" | sort
