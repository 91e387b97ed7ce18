#!/usr/bin/env bash
# Edge benchmark, one run, one machine, same CPU pinning for every cache:
# modcdn-edge, nginx proxy_cache and Varnish (malloc) in front of the same
# modcdn-origin, all warmed, then wrk against each in turn:
#   - random small hits: .info and .mod across 1000 modules
#   - one 16 KiB zip, one 1 MiB zip, one 64 MiB zip (MB/s)
# Caches run on CPU 0 (one worker each), wrk on CPU 1, the origin and the
# fixture upstream on CPU 1 too (they only serve the warm-up).
# Each row: the three caches take turns, 3 rounds, medians reported.
# Usage: tests/bench/edge.sh [seconds-per-wrk-run]   (default 10)
# Prints req/s, MB/s, p99 and ratios; nothing here is a pass/fail test.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/bench/lib.sh
DUR="${1:-10}"
for t in nginx varnishd wrk curl python3 taskset; do command -v "$t" >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx varnish wrk curl python3 util-linux >/dev/null; break; }; done
cargo build --release -q -p modcdn-edge -p modcdn-origin -p modcdn-tests --bins
BIN=target/release
WORK="$(mktemp -d)"
chmod 755 "$WORK"  # nginx workers run unprivileged
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null
  [ -f "$WORK/varnish.pid" ] && kill "$(cat "$WORK/varnish.pid")" 2>/dev/null
  sleep 0.5; rm -rf "$WORK"
}
trap cleanup EXIT


"$BIN/modcdn-fixture" corpus --out "$WORK/corpus" --large-mib 1 --many 1000 --sized-kib 16,1024,65536 >/dev/null
Z16=/example.com/sized/k16/@v/v1.0.0.zip
Z1M=/example.com/sized/k1024/@v/v1.0.0.zip
Z64M=/example.com/sized/k65536/@v/v1.0.0.zip

UP_PORT=$(port); ORIGIN_PORT=$(port); OPERATOR_PORT=$(port); EDGE_PORT=$(port); ADMIN_PORT=$(port); NGINX_PORT=$(port); VARNISH_PORT=$(port)
taskset -c 1 "$BIN/modcdn-fixture" upstream --corpus "$WORK/corpus" --listen "127.0.0.1:$UP_PORT" & PIDS+=($!)
wait_http "http://127.0.0.1:$UP_PORT/example.com/large/@v/list"
cat > "$WORK/origin.toml" <<TOML
listen = "127.0.0.1:$ORIGIN_PORT"
upstream = "http://127.0.0.1:$UP_PORT"
store_dir = "$WORK/origin-store"
verify = "off"
[operator]
listen = "127.0.0.1:$OPERATOR_PORT"
[log]
level = "warn"
TOML
taskset -c 1 "$BIN/modcdn-origin" serve --config "$WORK/origin.toml" >/dev/null & PIDS+=($!)
wait_http "http://127.0.0.1:$ORIGIN_PORT/healthz"

# modcdn-edge: one worker thread, defaults otherwise.
cat > "$WORK/membership.toml" <<TOML
single_region = true
[[origin]]
id = "origin"
address = "127.0.0.1:$ORIGIN_PORT"
operator = "127.0.0.1:$OPERATOR_PORT"
region = "us"
TOML
cat > "$WORK/edge.toml" <<TOML
listen = "127.0.0.1:$EDGE_PORT"
membership = "membership.toml"
threads = 1
upgrade_sock = "edge.sock"
pid_file = "edge.pid"
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[cache]
dir = "edge-cache"
[log]
level = "warn"
TOML
taskset -c 0 "$BIN/modcdn-edge" serve --config "$WORK/edge.toml" 2>"$WORK/edge.log" & PIDS+=($!)
wait_http "http://127.0.0.1:$ADMIN_PORT/healthz"

# nginx proxy_cache as a competent operator would run it: one worker,
# cache lock, sendfile, upstream keep-alive, responses kept per the
# origin's Cache-Control.
cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
worker_cpu_affinity 01;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 1000000; keepalive_timeout 60;
  open_file_cache max=10000 inactive=60s;
  proxy_cache_path $WORK/nginx-cache levels=1:2 keys_zone=mod:64m max_size=10g inactive=1y use_temp_path=off;
  upstream origin { server 127.0.0.1:$ORIGIN_PORT; keepalive 32; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache mod;
      proxy_cache_lock on;
      proxy_cache_lock_timeout 30s;
      proxy_cache_valid 404 1m;
      proxy_buffering on;
      add_header X-Cache \$upstream_cache_status;
    }
  }
}
NGINX
nginx -c "$WORK/nginx.conf" -p "$WORK" -g 'daemon on;'

# Varnish with malloc storage, its default VCL (keeps per Cache-Control).
mkdir -p "$WORK/varnish"
taskset -c 0 varnishd -n "$WORK/varnish" -a "127.0.0.1:$VARNISH_PORT" -b "127.0.0.1:$ORIGIN_PORT" \
  -s malloc,1G -P "$WORK/varnish.pid" -p thread_pools=1 >/dev/null 2>"$WORK/varnish.log"
wait_http "http://127.0.0.1:$VARNISH_PORT/example.com/large/@v/list"
wait_http "http://127.0.0.1:$NGINX_PORT/example.com/large/@v/list"

for i in $(seq 0 999); do printf '/example.com/many/m%04d/@v/v1.0.0.info\n/example.com/many/m%04d/@v/v1.0.0.mod\n' "$i" "$i"; done > "$WORK/small.txt"
write_random_lua

# Warm every cache with every path (twice, so each has it stored).
for port in $EDGE_PORT $NGINX_PORT $VARNISH_PORT; do
  for p in $(cat "$WORK/small.txt") $Z16 $Z1M $Z64M; do printf 'url = "http://127.0.0.1:%s%s"\noutput = "/dev/null"\n' "$port" "$p"; done > "$WORK/warm.cfg"
  curl -sf -K "$WORK/warm.cfg"; curl -sf -K "$WORK/warm.cfg"
done
for port in $EDGE_PORT $NGINX_PORT $VARNISH_PORT; do
  h=$(curl -sI "http://127.0.0.1:$port$Z64M" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache" {print $2} tolower($1)=="age" {print "age=" $2}' | tr '\n' ' ')
  echo "port $port 64 MiB zip: $h" >&2
done

REPS=3

printf '\n%-22s %11s %11s %11s %9s %9s %9s %18s %8s %8s %8s\n' row "edge r/s" "nginx r/s" "varnish r/s" "edge MB/s" "nginx MB/s" "varn MB/s" "p99 e/n/v ms" "e÷nginx" "e÷varn" "e÷best"
for row in "small-random 32" "zip-16KiB 32" "zip-1MiB 8" "zip-64MiB 4"; do
  set -- $row
  case $1 in
    small-random) path=/; file="$WORK/small.txt" ;;
    zip-16KiB) path=$Z16; file= ;;
    zip-1MiB) path=$Z1M; file= ;;
    zip-64MiB) path=$Z64M; file= ;;
  esac
  # The three caches take turns, $REPS rounds; each figure is the median,
  # so a noisy moment on this shared machine hurts no one in particular.
  declare -A rps=() mbs=() p99=()
  for rep in $(seq $REPS); do
    for who in edge nginx varnish; do
      case $who in edge) port=$EDGE_PORT ;; nginx) port=$NGINX_PORT ;; varnish) port=$VARNISH_PORT ;; esac
      read -r r m p <<<"$(run_wrk "http://127.0.0.1:$port$path" "$2" $file)"
      rps[$who]+="$r "; mbs[$who]+="$m "; p99[$who]+="$p "
    done
  done
  for who in edge nginx varnish; do
    rps[$who]=$(median3 ${rps[$who]}); mbs[$who]=$(median3 ${mbs[$who]}); p99[$who]=$(median3 ${p99[$who]})
  done
  if [ "$1" = zip-64MiB ]; then e=${mbs[edge]}; n=${mbs[nginx]}; v=${mbs[varnish]}; else e=${rps[edge]}; n=${rps[nginx]}; v=${rps[varnish]}; fi
  best=$(awk -v a="$n" -v b="$v" 'BEGIN {print (a > b) ? a : b}')
  printf '%-22s %11s %11s %11s %9s %9s %9s %18s %8s %8s %8s\n' "$1 (c=$2)" "${rps[edge]}" "${rps[nginx]}" "${rps[varnish]}" "${mbs[edge]}" "${mbs[nginx]}" "${mbs[varnish]}" "${p99[edge]}/${p99[nginx]}/${p99[varnish]}" "$(ratio "$e" "$n")" "$(ratio "$e" "$v")" "$(ratio "$e" "$best")"
done
echo "(medians of $REPS alternating rounds of ${DUR} s; ratios on req/s, on MB/s for the 64 MiB zip; targets vs nginx: ≥ 1.2x small, ≥ 1.0x zips, ≥ 0.9x 64 MiB MB/s; the bar is the best peer)"
