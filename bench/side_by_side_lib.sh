# bench/side_by_side_lib.sh: what the side-by-side scripts share, sourced by them (not run):
# the settings, the results file with its machine lines, the TinyLlama-shaped models and
# the interleaved repetitions. This machine is shared and its speed drifts from minute to
# minute, so engines alternate which goes first, per repetition and type.
#   BENCH_TYPES  (default "q4_0 q8_0 q4_k_m")  BENCH_REPS (default 4)  BENCH_THREADS (2)
#   BENCH_WAIT_IDLE, BENCH_WAIT_MAX: see sbs_wait_idle
# Models: build/bench/tinyllama-TYPE.gguf (written once, as bench/run.sh does).

# sbs_start DUET_BIN KIND: the settings above, and $out.tmp begun for
# bench/results/DATE-COMMIT-KIND.csv with the title and machine lines; the caller adds its
# command lines and the column header, then calls sbs_models.
sbs_start() {
    duet=$1
    types=${BENCH_TYPES:-"q4_0 q8_0 q4_k_m"}
    reps=${BENCH_REPS:-4}
    th=${BENCH_THREADS:-2}
    mkdir -p build/bench bench/results
    commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    out=bench/results/$(date +%Y%m%d-%H%M%S)-$commit-$2.csv
    cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
    {
        echo "# duet vs llama.cpp, commit $commit, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "# machine: $cpu, $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    } > "$out.tmp"
}

sbs_models() {
    for t in $types; do
        m=build/bench/tinyllama-$t.gguf
        [ -s "$m" ] || "$duet" make-model --n-embd 2048 --n-layer 22 --n-head 32 --n-head-kv 4 \
            --n-ff 5632 --n-vocab 32000 --type "$t" --seed 1 -o "$m"
    done
}

# sbs_idle: the percentage of CPU time left idle over 3 seconds, by the other jobs (ours
# are not running when it is called).
sbs_idle() { vmstat 3 2 | awk 'END { print $15 }'; }

# With BENCH_WAIT_IDLE=P, wait (at most BENCH_WAIT_MAX seconds, default 1800) until the
# machine is at least P% idle: other jobs' threads make a 2-thread benchmark's threads wait
# for cores, and engines that spin at barriers (llama.cpp) lose far more than the rest.
sbs_wait_idle() {
    [ -n "${BENCH_WAIT_IDLE:-}" ] || return 0
    w=0
    while [ "$(sbs_idle)" -lt "$BENCH_WAIT_IDLE" ] && [ $w -lt "${BENCH_WAIT_MAX:-1800}" ]; do
        sleep 7
        w=$((w + 10))
    done
}

# sbs_interleave RUN1 RUN2 ...: for each repetition and type, every RUNi TYPE REP once, the
# order rotated by one per repetition (with two: the first goes first in odd repetitions).
# Before each run $idle is the machine's idle percentage (after BENCH_WAIT_IDLE's wait).
sbs_interleave() {
    r=1
    while [ $r -le "$reps" ]; do
        for t in $types; do
            i=0
            while [ $i -lt $# ]; do
                eval "run=\${$(( (i + r - 1) % $# + 1 ))}"
                sbs_wait_idle
                idle=$(sbs_idle)
                "$run" "$t" $r
                i=$((i + 1))
            done
            echo "rep $r $t done" >&2
        done
        r=$((r + 1))
    done
}

# sbs_finish: the load at the end, then $out.tmp becomes $out.
sbs_finish() {
    echo "# load at end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out.tmp"
    mv "$out.tmp" "$out"
    echo "wrote $out"
}
