#!/bin/sh
# bench/serve_side_by_side.sh LLAMA_SERVER [DUET_BIN]: duet serve and llama.cpp's llama-server
# under the same concurrent load, in one run, interleaved (this machine is shared and its
# speed drifts from minute to minute). For each type and slot count NP both servers are
# started on free loopback ports with NP slots and 2 threads, then each repetition runs
# bench_serve (bench/bench_serve.c) against one and then the other, alternating which goes
# first: NP clients (or BENCH_CLIENTS), each sending BENCH_REQS streamed /v1/completions requests of the same
# made-up prompt (an id array, so both see the same tokens), n_predict 64, temperature 0.
# LLAMA_SERVER is a llama-server binary built outside the repository (this script does not
# build it). Writes the raw per-run figures to bench/results/DATE-COMMIT-serve-side-by-side.csv
# and a Markdown summary next to it (.md): aggregate tokens/s, the ratio duet / llama.cpp,
# latency p50/p99, errors, and each server's memory.
#   BENCH_TYPES (default q4_0)  BENCH_NP (default "4 8")  BENCH_REPS (2)  BENCH_THREADS (2)
#   BENCH_REQS (2)  BENCH_N_PREDICT (64)  BENCH_PROMPT_TOKENS (32)
#   BENCH_CLIENTS: client counts to run against each NP (default: NP clients), e.g. "1 2 4 8"
#   BENCH_DUET_ARGS: extra duet serve flags (e.g. "-ctk f16 -ctv f16")
# Context: duet serve -c 2048 holds 2048 positions per slot; llama-server splits -c across its
# slots, so it gets -c 2048*NP. KV cache types: each server's default (duet f32, llama-server
# f16) unless BENCH_DUET_ARGS says otherwise. Models: build/bench/tinyllama-TYPE.gguf
# (written once, as bench/run.sh does). Run it under `flock /tmp/bench.lock` on a shared
# machine so that no other benchmark runs meanwhile.
set -e
# Summary: per type and NP, each engine's mean over the repetitions, and duet / llama.cpp.
summary() { # FILE.csv: writes FILE.md and prints it
    csv=$1 md=${1%.csv}.md
    {
        echo "# duet serve vs llama-server: $(basename "$csv")"
        echo
        grep '^#' "$csv" | sed 's/^# */    /'
        echo
        echo "| type | np | clients | duet tok/s | llama.cpp tok/s | ratio | duet p50 / p99 ms | llama.cpp p50 / p99 ms | duet TTFT p50 ms | llama.cpp TTFT p50 ms | duet batch | errors duet / llama.cpp | duet RSS ready → peak MiB | llama.cpp RSS ready → peak MiB |"
        echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        awk -F, '/^#/ { next } $1 == "engine" { for (i = 1; i <= NF; i++) col[$i] = i; next }
            { k = $2 "," $3 "," $col["clients"]; e = $1 == "duet" ? 0 : 1; keys[k] = 1; n[e, k]++
              tps[e, k] += $col["agg_tps"]; p50[e, k] += $col["lat_p50_ms"]; p99[e, k] += $col["lat_p99_ms"]
              ttft[e, k] += $col["ttft_p50_ms"]; err[e, k] += $col["errors"]; bat[e, k] += $col["batch_size_mean"]
              ready[e, k] = $col["rss_ready_mib"]; if ($col["hwm_mib"] > hwm[e, k]) hwm[e, k] = $col["hwm_mib"] }
            END {
              for (k in keys) {
                split(k, a, ",")
                for (e = 0; e < 2; e++) { c = n[e, k] ? n[e, k] : 1; m[e] = tps[e, k] / c; q5[e] = p50[e, k] / c
                                          q9[e] = p99[e, k] / c; tf[e] = ttft[e, k] / c; bm[e] = bat[e, k] / c }
                printf "| %s | %s | %s | %.2f | %.2f | %.2fx | %.0f / %.0f | %.0f / %.0f | %.0f | %.0f | %.2f | %d / %d | %s → %s | %s → %s |\n",
                       a[1], a[2], a[3], m[0], m[1], (m[1] > 0 ? m[0] / m[1] : 0), q5[0], q9[0], q5[1], q9[1], tf[0], tf[1],
                       bm[0], err[0, k], err[1, k], ready[0, k], hwm[0, k], ready[1, k], hwm[1, k]
              }
            }' "$csv" | sort -t'|' -k2,2 -k3,3n -k4,4n
        echo
        echo "Per repetition (the ratio of each pair run back to back):"
        echo
        echo "| type | np | clients | rep | load | duet tok/s | llama.cpp tok/s | ratio |"
        echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        awk -F, '/^#/ { next } $1 == "engine" { for (i = 1; i <= NF; i++) col[$i] = i; next }
            { k = $2 "," $3 "," $col["clients"] "," $4; if ($1 == "duet") { d[k] = $col["agg_tps"]; ld[k] = $col["load1"] } else l[k] = $col["agg_tps"] }
            END { for (k in d) { split(k, a, ",")
                printf "| %s | %s | %s | %s | %s | %.2f | %.2f | %.2fx |\n", a[1], a[2], a[3], a[4], ld[k], d[k], l[k], (l[k] > 0 ? d[k] / l[k] : 0) } }' "$csv" | sort
    } > "$md"
    cat "$md"
    echo "wrote $md"
}
[ "$1" = --summary ] && { summary "${2:?usage: bench/serve_side_by_side.sh --summary FILE.csv}"; exit 0; }
ls=${1:?usage: bench/serve_side_by_side.sh LLAMA_SERVER [DUET_BIN]}
duet=${2:-build/duet}
bs=${BENCH_SERVE:-$(dirname "$duet")/bench_serve}
types=${BENCH_TYPES:-q4_0}
nps=${BENCH_NP:-"4 8"}
reps=${BENCH_REPS:-2}
th=${BENCH_THREADS:-2}
reqs=${BENCH_REQS:-2}
npred=${BENCH_N_PREDICT:-64}
ptok=${BENCH_PROMPT_TOKENS:-32}
dargs=${BENCH_DUET_ARGS:-}
[ -x "$bs" ] || { echo "no $bs: make $bs first" >&2; exit 2; }
mkdir -p build/bench bench/results
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
out=bench/results/$(date +%Y%m%d-%H%M%S)-$commit-serve-side-by-side.csv
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
bsargs="--api openai --stream --n-predict $npred --prompt-tokens $ptok --requests-per-client $reqs -o csv --no-header"
{
    echo "# duet serve vs llama-server, commit $commit, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "# machine: $cpu, $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "# duet:      $duet serve -m MODEL -np NP -t $th -c 2048 $dargs --quiet"
    echo "# llama.cpp: $ls -m MODEL -np NP -t $th -c 2048*NP --no-mmap ($($ls --version 2>&1 | grep -m1 version))"
    echo "# load:      $bs --url URL --clients ${BENCH_CLIENTS:-NP} $bsargs"
    echo "# load1: the 1-minute load average just before the run; rss/hwm: the server's VmRSS/VmHWM (MiB) after it"
    echo "engine,type,np,rep,load1,rss_ready_mib,rss_mib,hwm_mib,$("$bs" --csv-header)"
} > "$out.tmp"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
mib() { # pid field
    awk -v f="$2:" '$1 == f { printf "%.0f", $2 / 1024 }' "/proc/$1/status"
}
dpid= lpid=
stop_servers() {
    for p in $dpid $lpid; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
    dpid= lpid=
}
trap stop_servers EXIT INT TERM

run_one() { # engine type np rep url pid rss_ready clients
    load=$(cut -d' ' -f1 /proc/loadavg)
    row=$("$bs" --url "$5" --clients "$8" $bsargs --label "$1") || echo "bench_serve: $1 reported errors" >&2
    echo "$1,$2,$3,$4,$load,$7,$(mib "$6" VmRSS),$(mib "$6" VmHWM),$row" >> "$out.tmp"
}

for t in $types; do
    m=build/bench/tinyllama-$t.gguf
    [ -s "$m" ] || "$duet" make-model --n-embd 2048 --n-layer 22 --n-head 32 --n-head-kv 4 \
        --n-ff 5632 --n-vocab 32000 --type "$t" --seed 1 -o "$m"
    for np in $nps; do
        dport=$(free_port) lport=$(free_port)
        "$duet" serve -m "$m" -np "$np" -t "$th" -c 2048 $dargs --port "$dport" --quiet \
            > "build/bench/serve-duet.log" 2>&1 &
        dpid=$!
        "$ls" -m "$m" -np "$np" -t "$th" -c $((2048 * np)) --no-mmap --host 127.0.0.1 \
            --port "$lport" > "build/bench/serve-llama.log" 2>&1 &
        lpid=$!
        for u in "$dport" "$lport"; do # both loaded before either is measured
            i=0
            until curl -sf "http://127.0.0.1:$u/health" >/dev/null; do
                i=$((i + 1)); [ $i -lt 600 ] || { echo "server on $u did not start" >&2; exit 1; }
                sleep 0.2
            done
        done
        dready=$(mib $dpid VmRSS) lready=$(mib $lpid VmRSS)
        r=1
        while [ $r -le "$reps" ]; do
            for c in ${BENCH_CLIENTS:-$np}; do
                if [ $((r % 2)) = 1 ]; then
                    run_one duet "$t" "$np" $r "http://127.0.0.1:$dport" $dpid "$dready" "$c"
                    run_one llama.cpp "$t" "$np" $r "http://127.0.0.1:$lport" $lpid "$lready" "$c"
                else
                    run_one llama.cpp "$t" "$np" $r "http://127.0.0.1:$lport" $lpid "$lready" "$c"
                    run_one duet "$t" "$np" $r "http://127.0.0.1:$dport" $dpid "$dready" "$c"
                fi
            done
            echo "rep $r $t np $np done" >&2
            r=$((r + 1))
        done
        stop_servers
    done
done
echo "# load at end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out"

summary "$out"
