#!/bin/sh
# tests/browser/run.sh DUET_BIN SCREENSHOT: start duet serve on random-weight models (base,
# expert, untrained head) on a free loopback port, drive its web page with page_test.mjs,
# stop the server. Needs chromium and playwright-core (make deps-long).
set -e
bin=$1; shot=$2
dir=$(mktemp -d); pid=
trap 'if [ -n "$pid" ]; then kill $pid 2>/dev/null; fi; rm -rf "$dir"' EXIT
m="--n-embd 128 --n-layer 2 --n-head 4 --n-head-kv 2 --n-ff 256 --n-vocab 600 --n-ctx 256"
"$bin" make-model $m --seed 11 -o "$dir/base.gguf" >/dev/null
"$bin" make-model $m --seed 12 -o "$dir/expert.gguf" >/dev/null
"$bin" head init -m "$dir/base.gguf" -o "$dir/head.gguf" >/dev/null 2>&1
"$bin" serve -m "$dir/base.gguf" --expert "$dir/expert.gguf" --head "$dir/head.gguf" --port 0 -t 1 \
    2>"$dir/serve.log" &
pid=$!
port=
for i in $(seq 100); do
    port=$(sed -n 's/.*listening on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$dir/serve.log")
    [ -n "$port" ] && break
    sleep 0.1
done
[ -n "$port" ] || { cat "$dir/serve.log" >&2; echo "browser test: server did not start" >&2; exit 1; }
node "$(dirname "$0")/page_test.mjs" "http://127.0.0.1:$port/" "$shot"
