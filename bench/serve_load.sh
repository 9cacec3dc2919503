#!/bin/sh
# bench/serve_load.sh DUET_BIN [OLD_DUET_BIN]: duet serve under concurrent load, three checks
# on the TinyLlama-shaped Q4_0 file (build/bench/tinyllama-q4_0.gguf, as bench/run.sh writes
# it), each server with 2 threads and -c 2048, loaded by bench_serve (bench/bench_serve.c):
#  fairness: -np 5; 4 streamed /completion answers (BENCH_FAIR_N_PREDICT tokens, long enough
#    to outlast the late prompt) and, 2 s in, one request with a 1500-token prompt. Reported:
#    the largest gap between two tokens of a running stream while that request was answered,
#    and the time of one 256-token prefill chunk (the same length of prompt, another one, sent
#    alone first: its timings.prompt_ms over its 256-token chunks). Target: gap <= 2 chunks.
#  collab: Co-LLM with a local expert (a second TinyLlama-shaped file, seed 2) and an
#    untrained head (duet head init) at threshold BENCH_THRESHOLD (about 30% deferral on
#    this prompt); 4 clients x BENCH_REQS streamed /v1/completions of 64 tokens against
#    DUET_BIN and OLD_DUET_BIN (an earlier build, e.g. before batching), interleaved.
#  memory: -np 8, the server's VmRSS when ready, after 8 clients x 64 tokens (and VmHWM),
#    and after one long prompt (1500 tokens), against 8 full caches of 2048 positions.
# Writes bench/results/DATE-COMMIT-serve-load.csv (one row per run, bench_serve's columns
# after ours) and prints a summary (again: bench/serve_load.sh --summary FILE.csv). Run it
# under `flock /tmp/bench.lock` on a shared machine.
#   BENCH_PARTS (default "fairness collab memory")  BENCH_REPS (2)  BENCH_REQS (2)
#   BENCH_THRESHOLD (0.5007)  BENCH_FAIR_N_PREDICT (256)  BENCH_LONG_PROMPT (1500 tokens)
set -e
# The summary of a CSV this script wrote, by column name.
summary() {
    awk -F, '/^#/ { next } $1 == "part" { for (i = 1; i <= NF; i++) col[$i] = i; next }
        function v(name) { return $col[name] }
        $1 == "fairness" {
            printf "fairness rep %s (load %s): largest gap while the %s-token prompt was answered %.0f ms (before it: %.0f ms); one 256-token chunk %.0f ms: %.2f chunks (target <= 2); late answer %.0f ms; streams %.2f tok/s, errors %d; chunks with no step before them: %s of %s\n",
                   v("rep"), v("load1"), v("late_prompt_tokens"), v("gap_during_late_ms"), v("gap_before_late_ms"), v("chunk_ms"),
                   (v("chunk_ms") > 0 ? v("gap_during_late_ms") / v("chunk_ms") : 0), v("late_answer_ms"), v("agg_tps"), v("errors"),
                   ("chunks_unpaced" in col ? v("chunks_unpaced") : "?"), ("prefill_chunks" in col ? v("prefill_chunks") : "?") }
        $1 == "collab" { k = $3; t[$2, k] = v("agg_tps"); d[$2, k] = v("deferral"); e[$2, k] = v("errors"); reps[k] = 1 }
        $1 == "memory" {
            printf "memory %s (load %s): VmRSS ready %d MiB, after %d MiB, VmHWM %d MiB; %.2f tok/s, errors %d\n",
                   v("engine"), v("load1"), v("rss_ready_mib"), v("rss_mib"), v("hwm_mib"), v("agg_tps"), v("errors") }
        END {
            for (k in reps)
                printf "collab rep %s: new %.2f tok/s (deferral %.3f, errors %d), old %.2f tok/s (deferral %.3f, errors %d): %.2fx\n",
                       k, t["new", k], d["new", k], e["new", k], t["old", k], d["old", k], e["old", k],
                       (t["old", k] > 0 ? t["new", k] / t["old", k] : 0)
            # 22 layers x 2048 positions x 256 (4 kv heads x 64) x 4 bytes (f32) x 2 (K and V)
            printf "memory: 8 full f32 caches of 2048 positions would take 8 x %.0f MiB = %.0f MiB\n",
                   22 * 2048 * 256 * 4 * 2 / 1048576, 8 * 22 * 2048 * 256 * 4 * 2 / 1048576
        }' "$1"
}
[ "$1" = --summary ] && { summary "${2:?usage: bench/serve_load.sh --summary FILE.csv}"; exit 0; }
duet=${1:?usage: bench/serve_load.sh DUET_BIN [OLD_DUET_BIN]}
old=${2:-}
bs=${BENCH_SERVE:-$(dirname "$duet")/bench_serve}
parts=${BENCH_PARTS:-"fairness collab memory"}
reps=${BENCH_REPS:-2}
reqs=${BENCH_REQS:-2}
thr=${BENCH_THRESHOLD:-0.5007}
fair_n=${BENCH_FAIR_N_PREDICT:-256}
long=${BENCH_LONG_PROMPT:-1500}
[ -x "$bs" ] || { echo "no $bs: make $bs first" >&2; exit 2; }
mkdir -p build/bench bench/results
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
out=bench/results/$(date +%Y%m%d-%H%M%S)-$commit-serve-load.csv
m=build/bench/tinyllama-q4_0.gguf
ex=build/bench/tinyllama-q4_0-seed2.gguf
hd=build/bench/tinyllama-q4_0.head.gguf
shape="--n-embd 2048 --n-layer 22 --n-head 32 --n-head-kv 4 --n-ff 5632 --n-vocab 32000 --type q4_0"
[ -s "$m" ] || "$duet" make-model $shape --seed 1 -o "$m"
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
{
    echo "# duet serve under load, commit $commit, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "# machine: $cpu, $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "# duet: $duet${old:+; old: $old} (the commit above is the checkout's, not necessarily theirs)"
    echo "# model: $m; expert: $ex; head: $hd (duet head init), threshold $thr"
    echo "# load1: the 1-minute load average just before the run; rss_*: the server's VmRSS (MiB) when ready / after the run; hwm: VmHWM after it"
    echo "part,engine,rep,load1,rss_ready_mib,rss_mib,hwm_mib,$("$bs" --csv-header)"
} > "$out.tmp"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
mib() { # pid field
    awk -v f="$2:" '$1 == f { printf "%.0f", $2 / 1024 }' "/proc/$1/status"
}
pids=
stop_all() {
    for p in $pids; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
    pids=
}
trap stop_all EXIT INT TERM
# start BIN NAME ARGS...: a server on a free port; sets $port and $pid, waits for /health
start() {
    b=$1 name=$2
    shift 2
    port=$(free_port)
    "$b" serve "$@" -t 2 -c 2048 --port "$port" --quiet > "build/bench/serve-$name.log" 2>&1 &
    pid=$!
    pids="$pids $pid"
    i=0
    until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do
        i=$((i + 1)); [ $i -lt 600 ] || { echo "$name did not start" >&2; exit 1; }
        sleep 0.2
    done
}
# run PART ENGINE REP PORT PID RSS_READY BENCH_SERVE_ARGS...
run() {
    part=$1 eng=$2 rep=$3 p=$4 sp=$5 ready=$6
    shift 6
    load=$(cut -d' ' -f1 /proc/loadavg)
    row=$("$bs" --url "http://127.0.0.1:$p" -o csv --no-header --label "$eng" "$@") ||
        echo "bench_serve: $part $eng reported errors" >&2
    echo "$part,$eng,$rep,$load,$ready,$(mib "$sp" VmRSS),$(mib "$sp" VmHWM),$row" >> "$out.tmp"
}

for part in $parts; do
    case $part in
    fairness)
        start "$duet" duet -m "$m" -np 5
        ready=$(mib $pid VmRSS)
        r=1
        while [ $r -le "$reps" ]; do
            run fairness duet $r $port $pid "$ready" --api llama --stream --clients 4 \
                --n-predict "$fair_n" --prompt-tokens 32 --late-prompt-tokens "$long" --late-after-s 2
            r=$((r + 1))
        done
        stop_all ;;
    collab)
        [ -n "$old" ] || { echo "collab needs OLD_DUET_BIN" >&2; exit 2; }
        [ -s "$ex" ] || "$duet" make-model $shape --seed 2 -o "$ex"
        [ -s "$hd" ] || "$duet" head init --base "$m" -o "$hd"
        start "$duet" collab-new -m "$m" --expert "$ex" --head "$hd" --threshold "$thr" -np 4
        nport=$port npid=$pid nready=$(mib $pid VmRSS)
        start "$old" collab-old -m "$m" --expert "$ex" --head "$hd" --threshold "$thr" -np 4
        oport=$port opid=$pid oready=$(mib $pid VmRSS)
        set -- --api openai --stream --clients 4 --requests-per-client "$reqs" --n-predict 64 --prompt-tokens 32
        r=1
        while [ $r -le "$reps" ]; do
            if [ $((r % 2)) = 1 ]; then
                run collab new $r $nport $npid "$nready" "$@"
                run collab old $r $oport $opid "$oready" "$@"
            else
                run collab old $r $oport $opid "$oready" "$@"
                run collab new $r $nport $npid "$nready" "$@"
            fi
            r=$((r + 1))
        done
        stop_all ;;
    memory)
        start "$duet" duet -m "$m" -np 8
        ready=$(mib $pid VmRSS)
        run memory duet-8x64 1 $port $pid "$ready" --api openai --stream --clients 8 --n-predict 64 --prompt-tokens 32
        run memory duet-long 1 $port $pid "$ready" --api openai --clients 1 --n-predict 64 --prompt-tokens "$long" --warmup 0
        stop_all ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
    esac
    echo "$part done" >&2
done
echo "# load at end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out"

summary "$out"
