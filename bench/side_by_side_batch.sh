#!/bin/sh
# bench/side_by_side_batch.sh LLAMA_BATCHED_BENCH [DUET_BIN]: several sequences decoded
# together, duet bench --batch against llama.cpp's llama-batched-bench on the same GGUF
# files, interleaved as bench/side_by_side.sh runs them: per repetition and type, one duet
# run and one llama-batched-bench run of B prompts of PP tokens then TG steps of B tokens,
# for each B of the list, at 2 threads. LLAMA_BATCHED_BENCH is a binary built outside the
# repository (this script does not build it), or "none" to run duet alone. Writes the raw
# per-run rows to bench/results/DATE-COMMIT-batch-side-by-side.csv (with the machine's idle
# percentage just before each run: it is shared) and prints S_TG and S_PP per B, mean ± sd,
# with the ratio duet / llama.cpp.
#   BENCH_NPL (default 1,4,8)  BENCH_PP (128)  BENCH_TG (64)
#   BENCH_OLD_DUET: another duet binary (an older commit, without --batch) whose plain
#     `bench -p PP -n TG` joins the rotation as engine duet-old, a B = 1 row, and so does
#     DUET_BIN's plain bench as duet-plain: the single-sequence speed before and after the
#     batch engine.
# Settings and models: bench/side_by_side_lib.sh.
set -e
lbb=${1:?usage: bench/side_by_side_batch.sh LLAMA_BATCHED_BENCH|none [DUET_BIN]}
. "$(dirname "$0")/side_by_side_lib.sh"
sbs_start "${2:-build/duet}" batch-side-by-side
npl=${BENCH_NPL:-1,4,8}
pp=${BENCH_PP:-128}
tg=${BENCH_TG:-64}
old=${BENCH_OLD_DUET:-}
maxb=$(echo "$npl" | tr , '\n' | sort -n | tail -1)
ctx=$((maxb * (pp + tg))) # llama.cpp's one cache holds every sequence
{
    echo "# duet:      $duet bench -m MODEL --batch $npl -p $pp -n $tg -t $th -r 1 -o csv"
    [ "$lbb" = none ] ||
        echo "# llama.cpp: $lbb -m MODEL -npp $pp -ntg $tg -npl $npl -t $th -c $ctx --no-mmap --output-format jsonl"
    [ -z "$old" ] || echo "# duet-old:  $old bench -m MODEL -p $pp -n $tg -t $th -r 1 -o csv"
    [ -z "$old" ] || echo "# duet-plain: $duet bench -m MODEL -p $pp -n $tg -t $th -r 1 -o csv"
    echo "engine,type,rep,b,pp,tg,n_kv,t_pp,s_pp,t_tg,s_tg,t,s,idle_before"
} >> "$out.tmp"
sbs_models
run_duet() { # type rep
    "$duet" bench -m "build/bench/tinyllama-$1.gguf" --batch "$npl" -p "$pp" -n "$tg" -t "$th" -r 1 -o csv |
        awk -F, -v t="$1" -v r="$2" -v l="$idle" 'NR > 1 { printf "duet,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n",
            t, r, $7, $5, $6, $8, $9, $10, $11, $12, $13, $14, l }' >> "$out.tmp"
}
run_llama() { # type rep
    "$lbb" -m "build/bench/tinyllama-$1.gguf" -npp "$pp" -ntg "$tg" -npl "$npl" -t "$th" -c "$ctx" \
        --no-mmap --output-format jsonl 2>/dev/null |
        awk -v t="$1" -v r="$2" -v l="$idle" 'function v(k) { if (match($0, "\"" k "\": *[0-9.eE+-]+")) {
                s = substr($0, RSTART, RLENGTH); sub(/^[^:]*: */, "", s); return s } return "" }
            /^\{/ { print "llama.cpp," t "," r "," v("pl") "," v("pp") "," v("tg") "," v("n_kv") "," v("t_pp") "," \
                v("speed_pp") "," v("t_tg") "," v("speed_tg") "," v("t") "," v("speed") "," l }' >> "$out.tmp"
}
run_plain() { # BIN ENGINE type rep: pp and tg rows of the plain bench, as one B = 1 row
    "$1" bench -m "build/bench/tinyllama-$3.gguf" -p "$pp" -n "$tg" -t "$th" -r 1 -o csv |
        awk -F, -v e="$2" -v t="$3" -v r="$4" -v l="$idle" -v pp="$pp" -v tg="$tg" '
            NR > 1 && $5 ~ /^pp/ { spp = $6 }
            NR > 1 && $5 ~ /^tg/ { stg = $6 }
            END { tpp = pp / spp; ttg = tg / stg
                  printf "%s,%s,%s,1,%d,%d,%d,%.6f,%.3f,%.6f,%.3f,%.6f,%.3f,%s\n", e, t, r, pp, tg,
                      pp + tg, tpp, spp, ttg, stg, tpp + ttg, (pp + tg) / (tpp + ttg), l }' >> "$out.tmp"
}
run_old() { run_plain "$old" duet-old "$@"; }
run_new_plain() { run_plain "$duet" duet-plain "$@"; }
engines=run_duet
[ "$lbb" = none ] || engines="$engines run_llama"
[ -z "$old" ] || engines="$engines run_old run_new_plain"
# shellcheck disable=SC2086 # one word per engine
sbs_interleave $engines
sbs_finish
# Summary: duet against each other engine, per type and B: mean ± sd of S_TG and S_PP over
# the repetitions, and the ratio of the means.
awk -F, '/^#/ || $1 == "engine" { next }
    { k = $1 SUBSEP $2 SUBSEP $4; n[k]++; tg[k] += $11; tg2[k] += $11 * $11; pp[k] += $9; pp2[k] += $9 * $9
      eng[$1] = 1; key[$2 SUBSEP $4] = 1 }
    function mean(s, k) { return n[k] ? s / n[k] : 0 }
    function sd(s, s2, k) { return n[k] > 1 ? sqrt((s2 - s * s / n[k]) / (n[k] - 1)) : 0 }
    function cell(s, s2, k) { return sprintf("%.2f ± %.2f", mean(s, k), sd(s, s2, k)) }
    function ratio(a, b) { return b > 0 ? a / b : 0 }
    END {
      sort = "sort -t\"|\" -k2,2 -k3,3n"
      for (e in eng) {
        if (e == "duet") continue
        printf "\n| type | B | duet S_TG t/s | %s S_TG t/s | ratio | duet S_PP t/s | %s S_PP t/s | ratio |\n", e, e
        print "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        for (q in key) {
          split(q, a, SUBSEP); d = "duet" SUBSEP q; o = e SUBSEP q
          if (!n[d] || !n[o]) continue
          rt = ratio(mean(tg[d], d), mean(tg[o], o)); rp = ratio(mean(pp[d], d), mean(pp[o], o))
          printf "| %s | %s | %s | %s | %.2fx | %s | %s | %.2fx |\n", a[1], a[2], cell(tg[d], tg2[d], d),
            cell(tg[o], tg2[o], o), rt, cell(pp[d], pp2[d], d), cell(pp[o], pp2[o], o), rp | sort
        }
        close(sort)
      }
    }' "$out"
# S_TG per repetition: which state of the machine each pair of runs met (idle_before).
echo
echo "| type | B | rep | duet S_TG t/s | other engines S_TG t/s | idle % before duet's run |"
echo "| --- | ---: | ---: | ---: | --- | ---: |"
awk -F, '/^#/ || $1 == "engine" { next }
    { k = $2 "," $4 "," $3; if ($1 == "duet") { d[k] = $11; l[k] = $14 } else o[k] = o[k] $1 " " $11 " " }
    END { for (k in d) { split(k, a, ","); printf "| %s | %s | %s | %.2f | %s| %s |\n", a[1], a[2], a[3], d[k], o[k], l[k] } }' "$out" |
    sort -t'|' -k2,2 -k3,3n -k4,4n
