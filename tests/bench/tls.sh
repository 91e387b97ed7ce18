#!/usr/bin/env bash
# Hits over TLS, as the go command asks a GOPROXY on https (HTTP/2 by
# default, HTTP/1.1 with GODEBUG=http2client=0): modcdn-edge (`[tls]`) and
# nginx `proxy_cache` (`ssl http2`), both in front of the SAME plain origin
# (nginx serving the GOPROXY files statically), one worker each pinned to
# CPU 0, the clients and the static origin on CPU 1. One self-signed
# certificate (RSA 2048) for both; TLS 1.3 with either.
#
# Rows, each cache warmed first, caches taking turns in each round:
#   - HTTP/1.1 (wrk, 32 connections): random small .info hits over 500
#     modules, a 16 KiB zip, a 1 MiB zip (req/s);
#   - HTTP/2 (h2load, 32 connections, 10 streams each): the same (req/s);
#   - HTTP/2 cold misses: sequential first requests of `.mod` files (100,
#     fewer past 7 rounds) on one connection, new to each cache in each
#     turn (mean µs per request).
# Usage: tests/bench/tls.sh [seconds-per-run] [rounds]   (default 5 2)
# Prints each round's figures and the medians' ratio edge ÷ nginx; nothing
# here is a pass/fail test.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/bench/lib.sh
DUR="${1:-5}"
REPS="${2:-2}"
for t in nginx wrk h2load openssl curl python3 taskset; do command -v "$t" >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx wrk nghttp2-client openssl curl python3 util-linux >/dev/null; break; }; done
cargo build --release -q -p modcdn-edge -p modcdn-tests --bins
BIN=target/release
WORK="$(mktemp -d)"
chmod 755 "$WORK"  # nginx workers run unprivileged
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in static.pid nginx.pid; do [ -f "$WORK/$f" ] && kill "$(cat "$WORK/$f")" 2>/dev/null; done
  sleep 0.5; rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN/modcdn-fixture" corpus --out "$WORK/corpus" --large-mib 1 --many 2000 --sized-kib 16,1024 >/dev/null
C="$WORK/corpus"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -days 2 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
chmod 644 "$WORK/key.pem"
STATIC_PORT=$(port); STATIC_OPS_PORT=$(port); NGINX_PORT=$(port); EDGE_PORT=$(port); EDGE_TLS_PORT=$(port); ADMIN_PORT=$(port)
static_origin off
{ nginx_head nginx 01; cat <<NGINX
  access_log off;
  proxy_cache_path $WORK/nginx-cache levels=1:2 keys_zone=mod:64m max_size=10g inactive=1y use_temp_path=off;
  upstream origin { server 127.0.0.1:$STATIC_PORT; keepalive 32; }
  server {
    listen 127.0.0.1:$NGINX_PORT ssl http2;
    ssl_certificate $WORK/cert.pem; ssl_certificate_key $WORK/key.pem;
    ssl_session_cache shared:SSL:10m;
    location / {
      proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache mod; proxy_cache_lock on; proxy_cache_valid 404 1m; proxy_buffering on;
    }
  }
}
NGINX
} > "$WORK/nginx.conf"
nginx -c "$WORK/nginx.conf" -p "$WORK" -g 'daemon on;'
cat > "$WORK/membership.toml" <<TOML
single_region = true
[[origin]]
id = "origin"
address = "127.0.0.1:$STATIC_PORT"
operator = "127.0.0.1:$STATIC_OPS_PORT"
region = "us"
TOML
cat > "$WORK/edge.toml" <<TOML
listen = "127.0.0.1:$EDGE_PORT"
membership = "membership.toml"
threads = 1
upgrade_sock = "edge.sock"
pid_file = "edge.pid"
[tls]
listen = "127.0.0.1:$EDGE_TLS_PORT"
cert = "$WORK/cert.pem"
key = "$WORK/key.pem"
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[cache]
dir = "edge-cache"
[log]
level = "warn"
TOML
(cd "$WORK" && exec taskset -c 0 "$OLDPWD/$BIN/modcdn-edge" serve --config "$WORK/edge.toml" 2>"$WORK/edge.log") & PIDS+=($!)
wait_http "http://127.0.0.1:$ADMIN_PORT/healthz"
declare -A BASE=([nginx]="https://127.0.0.1:$NGINX_PORT" [edge]="https://127.0.0.1:$EDGE_TLS_PORT")
find "$C" -path '*/@v/*.info' | sed "s|^$C||" | sort | awk 'NR <= 500' > "$WORK/small.txt"
write_random_lua
Z16=/example.com/sized/k16/@v/v1.0.0.zip
Z1M=/example.com/sized/k1024/@v/v1.0.0.zip
# h2load URL → req/s; any answer but 2xx stops the benchmark.
run_h2load() {
  local out
  out=$(taskset -c 1 h2load -c32 -m10 -D "$DUR" "$@" 2>&1)
  echo "$out" | grep -q "status codes: [0-9]* 2xx, 0 3xx, 0 4xx, 0 5xx" || { echo "non-2xx answers: $out" >&2; exit 1; }
  echo "$out" | awk '/^finished in/ {print $4}'
}
# Sequential requests of the paths in $2 (each its first) on one HTTP/2
# connection to $1 → mean µs per request.
cold_h2() {
  local out
  out=$(sed "s|^|$1|" "$2" > "$WORK/cold-urls.txt" && taskset -c 1 h2load -n "$(wc -l < "$2")" -c1 -m1 -i "$WORK/cold-urls.txt" 2>&1)
  echo "$out" | grep -q "status codes: [0-9]* 2xx, 0 3xx, 0 4xx, 0 5xx" || { echo "non-2xx answers: $out" >&2; exit 1; }
  echo "$out" | awk '/^time for request:/ {v=$6; f=1; if (v ~ /ms$/) f=1000; else if (v ~ /us$/) f=1; else if (v ~ /s$/) f=1000000; sub(/[mu]?s$/, "", v); printf "%.0f", v * f}'
}
# (Of modules none of the hits asks for: the edge prefetches for modules
# it sees asked often.)
find "$C" -path '*/@v/*.mod' | sed "s|^$C||" | sort | grep -v -F -f <(sed 's|/@v/.*|/@v/|' "$WORK/small.txt") > "$WORK/mods.txt"
# As many per turn as there are for every turn, 100 at most.
PER=$(( $(wc -l < "$WORK/mods.txt") / (2 * REPS) )); [ "$PER" -gt 100 ] && PER=100
for who in nginx edge; do
  u=${BASE[$who]}
  DUR=2 run_wrk "$u/" 8 "$WORK/small.txt" >/dev/null
  DUR=2 run_wrk "$u$Z16" 8 >/dev/null
  DUR=2 run_wrk "$u$Z1M" 8 >/dev/null
done
declare -A R=()
ROWS="h1-small h1-16KiB h1-1MiB h2-small h2-16KiB h2-1MiB"
for rep in $(seq "$REPS"); do
  for who in nginx edge; do
    u=${BASE[$who]}
    sed "s|^|$u|" "$WORK/small.txt" > "$WORK/urls.txt"
    R[h1-small-$who]+="$(run_wrk "$u/" 32 "$WORK/small.txt" | cut -d' ' -f1) "
    R[h1-16KiB-$who]+="$(run_wrk "$u$Z16" 32 | cut -d' ' -f1) "
    R[h1-1MiB-$who]+="$(run_wrk "$u$Z1M" 32 | cut -d' ' -f1) "
    R[h2-small-$who]+="$(run_h2load -i "$WORK/urls.txt") "
    R[h2-16KiB-$who]+="$(run_h2load "$u$Z16") "
    R[h2-1MiB-$who]+="$(run_h2load "$u$Z1M") "
    # .mod files none has been asked for, new to this cache.
    turn=$(( (rep - 1) * 2 + $([ "$who" = edge ] && echo 1 || echo 0) ))
    sed -n "$((turn * PER + 1)),$((turn * PER + PER))p" "$WORK/mods.txt" > "$WORK/cold.txt"
    R[h2-cold-$who]+="$(cold_h2 "$u" "$WORK/cold.txt") "
  done
done
med() { printf '%s\n' $1 | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
printf '| %-10s | %-24s | %-24s | %-8s |\n' row nginx edge "e÷nginx"
for r in $ROWS; do
  printf '| %-10s | %-24s | %-24s | %-8s |\n' "$r" "${R[$r-nginx]}" "${R[$r-edge]}" "$(ratio "$(med "${R[$r-edge]}")" "$(med "${R[$r-nginx]}")")"
done
printf '| %-10s | %-24s | %-24s | %-8s |\n' h2-cold "${R[h2-cold-nginx]}" "${R[h2-cold-edge]}" "$(ratio "$(med "${R[h2-cold-nginx]}")" "$(med "${R[h2-cold-edge]}")")"
echo "(req/s of each round; ratio of the medians; runs of ${DUR} s, 32 connections, h2load 10 streams each;"
echo " h2-cold: mean µs of $PER sequential first requests of .mod files on one HTTP/2 connection, ratio nginx ÷ edge)"
