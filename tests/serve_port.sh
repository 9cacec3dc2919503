# tests/serve_port.sh, sourced by the scripts that drive a duet serve they started in the
# background with its stderr in LOG: wait_port LOG NAME sets $port from the server's
# "listening on" line, or prints the log and exits 1 after 10 s.
wait_port() {
    port=
    for i in $(seq 100); do
        port=$(sed -n 's/.*listening on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$1")
        [ -n "$port" ] && return 0
        sleep 0.1
    done
    cat "$1" >&2
    echo "$2: server did not start" >&2
    exit 1
}
