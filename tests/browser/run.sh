#!/bin/sh
# tests/browser/run.sh DUET_BIN SCREENSHOT: start duet serve on the embedded demo models
# (models/: the jointly trained base and head with the expert, as make demo and make serve run
# them) on a free loopback port, drive its web page with page_test.mjs on a held-out demo
# question, stop the server. Needs chromium and playwright-core (make deps-long).
set -e
bin=$1; shot=$2
m=${DUET_MODELS:-models}
dir=$(mktemp -d); pid=
trap 'if [ -n "$pid" ]; then kill $pid 2>/dev/null; fi; rm -rf "$dir"' EXIT
for f in demo-joint.gguf demo-joint.head.gguf demo-expert.gguf demo-heldout.jsonl; do
    [ -r "$m/$f" ] || { echo "browser test: $m/$f is missing (make models rebuilds it)" >&2; exit 1; }
done
# the question the page offers by default (line 3 of the held-out set) and its reference answer
line=$(sed -n 3p "$m/demo-heldout.jsonl")
question=$(printf '%s\n' "$line" | sed 's/^{"question": "\(.*\)", "answer".*$/\1/')
ref=$(printf '%s\n' "$line" | sed 's/.*#### \([0-9]*\)"}$/\1/')
# the log exists before the server starts: the background shell opens it only once forked,
# and a sed on a missing file would end this script (set -e) before the server says its port
: >"$dir/serve.log"
"$bin" serve -m "$m/demo-joint.gguf" --expert "$m/demo-expert.gguf" --head "$m/demo-joint.head.gguf" \
    --port 0 -t 1 2>"$dir/serve.log" &
pid=$!
. "$(dirname "$0")/../serve_port.sh"
wait_port "$dir/serve.log" "browser test"
node "$(dirname "$0")/page_test.mjs" "http://127.0.0.1:$port/" "$shot" "$question" "$ref"
