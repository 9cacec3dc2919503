#!/bin/sh
# tests/openai/run.sh DUET_BIN: start duet serve on random-weight models (base, expert, an
# untrained head) on a free loopback port, run the official openai npm client against it
# (client_test.mjs), stop the server. Needs node and the openai package (make deps-long).
set -e
bin=$1
dir=$(mktemp -d); pid=
trap 'if [ -n "$pid" ]; then kill $pid 2>/dev/null; fi; rm -rf "$dir"' EXIT
m="--n-embd 128 --n-layer 2 --n-head 4 --n-head-kv 2 --n-ff 256 --n-vocab 600 --n-ctx 256"
"$bin" make-model $m --seed 11 -o "$dir/base.gguf" >/dev/null
"$bin" make-model $m --seed 12 -o "$dir/expert.gguf" >/dev/null
"$bin" head init -m "$dir/base.gguf" -o "$dir/head.gguf" >/dev/null 2>&1
: > "$dir/serve.log"
"$bin" serve -m "$dir/base.gguf" --expert "$dir/expert.gguf" --head "$dir/head.gguf" \
    --chat-template chatml --port 0 -t 1 2>"$dir/serve.log" &
pid=$!
. "$(dirname "$0")/../serve_port.sh"
wait_port "$dir/serve.log" "openai client test"
model=$(node -e "fetch('http://127.0.0.1:$port/v1/models').then(r=>r.json()).then(j=>console.log(j.data[0].id))")
node "$(dirname "$0")/client_test.mjs" "http://127.0.0.1:$port/v1" "$model"
