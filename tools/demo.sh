#!/bin/sh
# tools/demo.sh DUET_BIN: the demo. Until duet ships its own embedded model pair (a later
# issue), it imports stories260K from ../shared and tells a story with it.
set -e
duet=${1:-build/duet}
shared=${DUET_SHARED:-../shared}
ckpt=$shared/models/stories260K/stories260K.bin
tok=$shared/models/stories260K/tok512.bin
if [ ! -r "$ckpt" ] || [ ! -r "$tok" ]; then
    echo "demo: needs $ckpt and $tok (the shared data folder beside this checkout;" >&2
    echo "      set DUET_SHARED=/path/to/shared). Nothing to run without a model." >&2
    exit 1
fi
mkdir -p build/models
out=build/models/stories260K.gguf
[ -s "$out" ] || "$duet" convert --llama2c "$ckpt" --tokenizer "$tok" -o "$out"
echo "== duet run -m $out -p 'Once upon a time' -n 200 --temp 0.8 --seed 42"
"$duet" run -m "$out" -p "Once upon a time" -n 200 --temp 0.8 --seed 42
