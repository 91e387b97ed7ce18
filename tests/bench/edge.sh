#!/usr/bin/env bash
# Edge benchmark: one run, one machine, the same CPU pinning for every cache.
# modcdn-edge, nginx proxy_cache, Varnish malloc and Varnish file all sit in
# front of the SAME plain origin (nginx serving the GOPROXY files
# statically, as a real upstream would), so the comparison is the cache
# alone. A second modcdn path (edge + modcdn-origin) in front of the same
# files measures the whole product.
#
# Rows (every figure the median of $REPS rounds in which the caches take
# turns, each round on keys no cache has seen when it counts as cold):
#   - cold miss, 1 MiB zip: latency added over the static origin direct
#     (100 sequential GETs per cache and round, in turns of 10 on one
#     kept-alive connection each: the median of the turns' p50s);
#   - one client's first download of a never-seen 64 MiB zip: its total
#     time (three per cache and round, the caches taking turns: the median);
#   - 200 concurrent GETs of one never-seen 64 MiB zip: requests that
#     reached the static origin (its access log) and wall time;
#   - 200 concurrent GETs of the same, now cached: wall time;
#   - hits with wrk: random small .info/.mod, a 16 KiB zip, a 1 MiB zip, a
#     4 MiB zip, random zips of 256 KiB over 2000 modules (500 MiB: more
#     than the edge's memory tier holds), random zips of 16 KiB over 20000
#     modules (335 MB, also more) (req/s), a 64 MiB zip (MB/s), a 16 KiB
#     zip revalidated (If-None-Match that matches: 304) and 1 KiB ranges
#     of a 1 MiB zip (206) (req/s); random small .info/.mod over 1 000
#     kept-alive connections (req/s, and the p99 latency: no connection
#     left waiting while others are served);
#   - a steady stream of cold misses: 20 000 .info no cache has seen,
#     each asked for once over 10 connections, then 20 000 zips of 16 KiB
#     the same way (req/s);
#   - the whole path, edge + origin, cold .info/.mod: latency added over
#     the static origin direct.
# Caches (and modcdn-origin) run on CPU 0, one worker each; clients and the
# static origin on CPU 1.
# Usage: tests/bench/edge.sh [seconds-per-wrk-run] [rounds]   (default 10 3)
# Prints the table with ratios edge ÷ nginx and edge ÷ best peer; nothing
# here is a pass/fail test.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/bench/lib.sh
DUR="${1:-10}"
REPS="${2:-3}"
for t in cmake g++ nginx varnishd wrk curl python3 taskset; do command -v "$t" >/dev/null || { apt-get update -qq && apt-get install -y -qq cmake g++ nginx varnish wrk curl python3 util-linux >/dev/null; break; }; done
cargo build --release -q -p modcdn-edge -p modcdn-origin -p modcdn-tests --bins
BIN=target/release
WORK="$(mktemp -d)"
chmod 755 "$WORK"  # nginx workers run unprivileged
PIDS=()
cleanup() {
  local rc=$?
  [ "$rc" != 0 ] && for f in "$WORK"/*.log; do [ "$f" = "$WORK/static-access.log" ] || { echo "== $f" >&2; tail -n 15 "$f" >&2; }; done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in static.pid nginx.pid varnish-malloc.pid varnish-file.pid; do
    [ -f "$WORK/$f" ] && kill "$(cat "$WORK/$f")" 2>/dev/null
  done
  sleep 0.5; rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN/modcdn-fixture" corpus --out "$WORK/corpus" --large-mib 1 --many 1000 --sized-kib 16,256,1024,4096,65536 >/dev/null
C="$WORK/corpus"
Z16=/example.com/sized/k16/@v/v1.0.0.zip
Z1M=/example.com/sized/k1024/@v/v1.0.0.zip
Z4M=/example.com/sized/k4096/@v/v1.0.0.zip
Z64M=/example.com/sized/k65536/@v/v1.0.0.zip
PEERS="edge nginx varnish-malloc varnish-file"
# Keys no cache has seen, one set per cache and round: hard links to the
# same 1 MiB and 64 MiB zips (the static origin serves the same bytes from
# the page cache; every cache stores its own copy).
for rep in $(seq "$REPS"); do
  for who in direct $PEERS; do
    for i in $(seq 0 99); do
      mkdir -p "$C/example.com/cold/$who-$rep-$i/@v"
      ln "$C$Z1M" "$C/example.com/cold/$who-$rep-$i/@v/v1.0.0.zip"
      echo "/example.com/cold/$who-$rep-$i/@v/v1.0.0.zip"
    done > "$WORK/cold-$who-$rep.txt"
    mkdir -p "$C/example.com/stampede/$who-$rep/@v"
    ln "$C$Z64M" "$C/example.com/stampede/$who-$rep/@v/v1.0.0.zip"
    for i in 0 1 2; do
      mkdir -p "$C/example.com/first/$who-$rep-$i/@v"
      ln "$C$Z64M" "$C/example.com/first/$who-$rep-$i/@v/v1.0.0.zip"
    done
  done
done
for i in $(seq -w 0 1999); do
  mkdir -p "$C/example.com/spread/s$i/@v"
  ln "$C/example.com/sized/k256/@v/v1.0.0.zip" "$C/example.com/spread/s$i/@v/v1.0.0.zip"
  echo "/example.com/spread/s$i/@v/v1.0.0.zip"
done > "$WORK/spread.txt"
python3 - "$C" "$Z16" > "$WORK/spread16.txt" <<'PY'
import os, sys
root, z16 = sys.argv[1], sys.argv[2]
for i in range(20000):
    d = f"{root}/example.com/spread16/s{i:05d}/@v"
    os.makedirs(d)
    os.link(root + z16, d + "/v1.0.0.zip")
    print(f"/example.com/spread16/s{i:05d}/@v/v1.0.0.zip")
PY
# A steady stream of cold misses: 20 000 .info no cache has seen, per cache
# and round (each key a symbolic link to one module's directory), then the
# 20 000 zips of 16 KiB under the same links.
python3 - "$C" "$WORK" "$REPS" $PEERS <<'PY'
import os, sys
root, work, reps, peers = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
os.makedirs(f"{root}/example.com/stream")
for rep in range(1, reps + 1):
    for who in peers:
        with open(f"{work}/stream-{who}-{rep}.txt", "w") as out, open(f"{work}/zips-{who}-{rep}.txt", "w") as zips:
            for i in range(20000):
                os.symlink(f"{root}/example.com/sized/k16", f"{root}/example.com/stream/{who}-{rep}-{i}")
                out.write(f"/example.com/stream/{who}-{rep}-{i}/@v/v1.0.0.info\n")
                zips.write(f"/example.com/stream/{who}-{rep}-{i}/@v/v1.0.0.zip\n")
PY

STATIC_PORT=$(port); STATIC_OPS_PORT=$(port); EDGE_PORT=$(port); ADMIN_PORT=$(port); NGINX_PORT=$(port)
VM_PORT=$(port); VF_PORT=$(port); ORIGIN_PORT=$(port); OPERATOR_PORT=$(port); FULL_PORT=$(port); FULL_ADMIN_PORT=$(port)

# The plain origin: nginx serving the files, immutable artifacts marked so
# (as proxy.golang.org does), answering the edge's health and load polls.
static_origin "$WORK/static-access.log path"
wait_http "http://127.0.0.1:$STATIC_PORT/example.com/large/@v/list"

# modcdn-edge in front of the static origin: one worker thread, defaults otherwise.
edge_config() { # name port admin-port origin-address operator-address
  cat > "$WORK/$1-membership.toml" <<TOML
single_region = true
[[origin]]
id = "origin"
address = "$4"
operator = "$5"
region = "us"
TOML
  cat > "$WORK/$1.toml" <<TOML
listen = "127.0.0.1:$2"
membership = "$1-membership.toml"
threads = 1
upgrade_sock = "$1.sock"
pid_file = "$1.pid"
[admin]
listen = "127.0.0.1:$3"
[cache]
dir = "$1-cache"
[log]
level = "warn"
TOML
}
edge_config edge "$EDGE_PORT" "$ADMIN_PORT" "127.0.0.1:$STATIC_PORT" "127.0.0.1:$STATIC_OPS_PORT"
taskset -c 0 "$BIN/modcdn-edge" serve --config "$WORK/edge.toml" 2>"$WORK/edge.log" & PIDS+=($!)

# The whole product: another edge, in front of modcdn-origin, in front of
# the same static origin.
origin_toml "127.0.0.1:$ORIGIN_PORT" "http://127.0.0.1:$STATIC_PORT" "$WORK/origin-store" "127.0.0.1:$OPERATOR_PORT" > "$WORK/origin.toml"
taskset -c 0 "$BIN/modcdn-origin" serve --config "$WORK/origin.toml" >/dev/null & PIDS+=($!)
edge_config full "$FULL_PORT" "$FULL_ADMIN_PORT" "127.0.0.1:$ORIGIN_PORT" "127.0.0.1:$OPERATOR_PORT"
taskset -c 0 "$BIN/modcdn-edge" serve --config "$WORK/full.toml" 2>"$WORK/full.log" & PIDS+=($!)

# nginx proxy_cache as a competent operator would run it: one worker,
# cache lock, sendfile, upstream keep-alive, responses kept per the
# origin's Cache-Control.
{ nginx_head nginx 01; cat <<NGINX
  access_log off;
  proxy_cache_path $WORK/nginx-cache levels=1:2 keys_zone=mod:64m max_size=10g inactive=1y use_temp_path=off;
  upstream origin { server 127.0.0.1:$STATIC_PORT; keepalive 32; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache mod;
      proxy_cache_lock on;
      proxy_cache_lock_timeout 60s;
      proxy_cache_lock_age 60s;
      proxy_cache_valid 404 1m;
      proxy_buffering on;
      add_header X-Cache \$upstream_cache_status;
    }
  }
}
NGINX
} > "$WORK/nginx.conf"
nginx -c "$WORK/nginx.conf" -p "$WORK" -g 'daemon on;'

# Varnish, its default VCL (keeps per Cache-Control), malloc and file storage.
for s in malloc file; do
  case $s in malloc) vport=$VM_PORT; storage="malloc,2G" ;; file) vport=$VF_PORT; storage="file,$WORK/varnish-file.bin,4G" ;; esac
  mkdir -p "$WORK/varnish-$s"
  taskset -c 0 varnishd -n "$WORK/varnish-$s" -a "127.0.0.1:$vport" -b "127.0.0.1:$STATIC_PORT" \
    -s "$storage" -P "$WORK/varnish-$s.pid" -p thread_pools=1 >/dev/null 2>"$WORK/varnish-$s.log"
done
for u in "$ADMIN_PORT/healthz" "$FULL_ADMIN_PORT/healthz" "$ORIGIN_PORT/healthz" "$NGINX_PORT/example.com/large/@v/list" \
  "$VM_PORT/example.com/large/@v/list" "$VF_PORT/example.com/large/@v/list"; do wait_http "http://127.0.0.1:$u"; done
wait_http "http://127.0.0.1:$EDGE_PORT/example.com/large/@v/list"
wait_http "http://127.0.0.1:$FULL_PORT/example.com/large/@v/list"
port_of() { case $1 in direct) echo "$STATIC_PORT" ;; edge) echo "$EDGE_PORT" ;; nginx) echo "$NGINX_PORT" ;; varnish-malloc) echo "$VM_PORT" ;; varnish-file) echo "$VF_PORT" ;; esac; }

# p50 in µs of sequential GETs of the paths in $2 from port $1.
p50() { taskset -c 1 "$BIN/modcdn-fixture" latency --base "http://127.0.0.1:$1" --paths "$2" | sed 's/.*p50_us=\([0-9]*\).*/\1/'; }
# N concurrent GETs of one path: prints the wall time in seconds.
fan_out() { # port path n
  for _ in $(seq "$3"); do printf 'url = "http://127.0.0.1:%s%s"\noutput = "/dev/null"\n' "$1" "$2"; done > "$WORK/fan.cfg"
  local t0 t1; t0=$(date +%s.%N)
  taskset -c 1 curl -sf --no-progress-meter --parallel --parallel-immediate --parallel-max "$3" -K "$WORK/fan.cfg" || { echo "fan-out of $2 from $1 failed" >&2; exit 1; }
  t1=$(date +%s.%N); awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}'
}
origin_requests() { grep -c -x "$1" "$WORK/static-access.log" || true; }

declare -A cold=() first=() storm_n=() storm_wall=() warm_wall=()
# Cold misses: the caches take turns every 10 requests (a slow spell of
# this shared machine then falls on all of them), each turn from a quiet
# disk (without the sync, the writeback of what the cache before it wrote
# lands on its turn); the row is the median of the turns' p50s.
for rep in $(seq "$REPS"); do
  for who in direct $PEERS; do split -l 10 -d "$WORK/cold-$who-$rep.txt" "$WORK/cold-$who-$rep-"; done
  for block in $(seq -w 0 09); do
    for who in direct $PEERS; do
      sync
      cold[$who]+="$(p50 "$(port_of "$who")" "$WORK/cold-$who-$rep-$block") "
    done
  done
  for i in 0 1 2; do
    for who in $PEERS; do
      sync
      first[$who]+="$(taskset -c 1 curl -sf -o /dev/null -w '%{time_total}' "http://127.0.0.1:$(port_of "$who")/example.com/first/$who-$rep-$i/@v/v1.0.0.zip" |
        awk '{printf "%.1f", $1 * 1000}') "
    done
  done
  for who in $PEERS; do
    path="/example.com/stampede/$who-$rep/@v/v1.0.0.zip"
    sync
    storm_wall[$who]+="$(fan_out "$(port_of "$who")" "$path" 200) "
    storm_n[$who]+="$(origin_requests "$path") "
    warm_wall[$who]+="$(fan_out "$(port_of "$who")" "$path" 200) "
  done
done

# The whole product, cold .info and .mod, against the static origin direct.
for i in $(seq 0 499); do printf '/example.com/many/m%04d/@v/v1.0.0.info\n/example.com/many/m%04d/@v/v1.0.0.mod\n' "$i" "$i"; done > "$WORK/full-direct.txt"
for i in $(seq 500 999); do printf '/example.com/many/m%04d/@v/v1.0.0.info\n/example.com/many/m%04d/@v/v1.0.0.mod\n' "$i" "$i"; done > "$WORK/full-cold.txt"
sync
full_direct=$(p50 "$STATIC_PORT" "$WORK/full-direct.txt")
full_cold=$(p50 "$FULL_PORT" "$WORK/full-cold.txt")

# Hits: warm every cache with every path (twice, so each has it stored).
for i in $(seq 0 999); do printf '/example.com/many/m%04d/@v/v1.0.0.info\n/example.com/many/m%04d/@v/v1.0.0.mod\n' "$i" "$i"; done > "$WORK/small.txt"
write_random_lua
for who in $PEERS; do
  for p in $(cat "$WORK/small.txt" "$WORK/spread.txt" "$WORK/spread16.txt") $Z16 $Z1M $Z4M $Z64M; do printf 'url = "http://127.0.0.1:%s%s"\noutput = "/dev/null"\n' "$(port_of "$who")" "$p"; done > "$WORK/warm.cfg"
  curl -sf --parallel --parallel-max 8 --no-progress-meter -K "$WORK/warm.cfg"
  curl -sf --parallel --parallel-max 8 --no-progress-meter -K "$WORK/warm.cfg"
done
# Hits are counted on settled caches: the page cache's dirty pages written
# (nginx, Varnish file), and the edges' fills made durable, which wait for
# the kernel's writeback delay (35 s by default; at most 90 s here).
sync
for admin in "$ADMIN_PORT" "$FULL_ADMIN_PORT"; do
  for _ in $(seq 90); do
    waiting=$(curl -sf "http://127.0.0.1:$admin/metrics" | awk '$1 == "modcdn_edge_cache_waiting_fills" {print $2}')
    [ "${waiting:-1}" = 0 ] && break
    sleep 1
  done
done
# Revalidations and ranges, as a browser or a download tool sends them
# (the go command sends neither): each peer's answer checked first.
ETAG16=$(curl -sfI "http://127.0.0.1:$STATIC_PORT$Z16" | awk 'tolower($1) == "etag:" {print $2}' | tr -d '\r')
for who in $PEERS; do
  for check in "304|If-None-Match: $ETAG16|$Z16" "206|Range: bytes=1000-2023|$Z1M"; do
    IFS='|' read -r want header path <<<"$check"
    got=$(curl -s -o /dev/null -w '%{http_code}' -H "$header" "http://127.0.0.1:$(port_of "$who")$path")
    [ "$got" = "$want" ] || { echo "$who answered $got, not $want, to $header for $path" >&2; exit 1; }
  done
done
declare -A hit=()
for row in "small-random 32" "small-1000-conns 1000" "zip-16KiB 32" "zip-1MiB 8" "zip-4MiB 8" "spread-256KiB 16" "spread-16KiB 32" "zip-64MiB 4" \
  "revalidate-16KiB 32" "range-1KiB-of-1MiB 32"; do
  set -- $row
  HEADER=
  case $1 in
    small-random | small-1000-conns) path=/; file="$WORK/small.txt" ;;
    zip-16KiB) path=$Z16; file= ;;
    zip-1MiB) path=$Z1M; file= ;;
    zip-4MiB) path=$Z4M; file= ;;
    spread-256KiB) path=/; file="$WORK/spread.txt" ;;
    spread-16KiB) path=/; file="$WORK/spread16.txt" ;;
    zip-64MiB) path=$Z64M; file= ;;
    revalidate-16KiB) path=$Z16; file=; HEADER="If-None-Match: $ETAG16" ;;
    range-1KiB-of-1MiB) path=$Z1M; file=; HEADER="Range: bytes=1000-2023" ;;
  esac
  for rep in $(seq "$REPS"); do
    for who in $PEERS; do
      read -r r m p <<<"$(run_wrk "http://127.0.0.1:$(port_of "$who")$path" "$2" $file)"
      if [ "$1" = zip-64MiB ]; then hit[$1-$who]+="$m "; else hit[$1-$who]+="$r "; fi
      hit[$1-p99-$who]+="$p "
    done
  done
done

# The streams: each cache in turn asks for its 20 000 new keys once, over
# 10 connections, as fast as it answers (the edge last in each round).
declare -A stream=() zips=()
for rep in $(seq "$REPS"); do
  for list in stream zips; do
    for who in nginx varnish-malloc varnish-file edge; do
      sync
      out=$(taskset -c 1 "$BIN/modcdn-fixture" latency --base "http://127.0.0.1:$(port_of "$who")" --paths "$WORK/$list-$who-$rep.txt" --connections 10)
      rps="$(echo "$out" | sed 's/.*rps=\([0-9]*\).*/\1/') "
      if [ "$list" = stream ]; then stream[$who]+=$rps; else zips[$who]+=$rps; fi
    done
  done
done

med() { printf '%s\n' $1 | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
# row: name, unit, direction (higher|lower is better), then one figure per peer.
row() {
  local name=$1 unit=$2 better=$3 e=$4 n=$5 vm=$6 vf=$7 best r_n r_b
  if [ "$better" = higher ]; then
    best=$(printf '%s\n' "$n" "$vm" "$vf" | sort -g | tail -1); r_n=$(ratio "$e" "$n"); r_b=$(ratio "$e" "$best")
  else
    best=$(printf '%s\n' "$n" "$vm" "$vf" | sort -g | head -1); r_n=$(ratio "$n" "$e"); r_b=$(ratio "$best" "$e")
  fi
  printf '| %-52s | %10s | %10s | %10s | %10s | %-6s | %7s | %7s |\n' "$name" "$n" "$vm" "$vf" "$e" "$unit" "$r_n" "$r_b"
}
d=$(med "${cold[direct]}")
added() { awk -v a="$(med "$1")" -v d="$d" 'BEGIN {printf "%.2f", (a - d) / 1000}'; }
echo
printf '| %-52s | %10s | %10s | %10s | %10s | %-6s | %7s | %7s |\n' row nginx "varnish-m" "varnish-f" "edge" unit "e÷nginx" "e÷best"
printf '|%s|%s|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..54})" ------------ ------------ ------------ ------------ -------- --------- ---------
row "cold miss 1 MiB zip, added over origin (p50)" ms lower "$(added "${cold[edge]}")" "$(added "${cold[nginx]}")" "$(added "${cold[varnish-malloc]}")" "$(added "${cold[varnish-file]}")"
row "first download of a new 64 MiB zip, one client" ms lower "$(med "${first[edge]}")" "$(med "${first[nginx]}")" "$(med "${first[varnish-malloc]}")" "$(med "${first[varnish-file]}")"
row "stampede 200 × new 64 MiB zip: origin requests" req lower "$(med "${storm_n[edge]}")" "$(med "${storm_n[nginx]}")" "$(med "${storm_n[varnish-malloc]}")" "$(med "${storm_n[varnish-file]}")"
row "stampede 200 × new 64 MiB zip: wall" s lower "$(med "${storm_wall[edge]}")" "$(med "${storm_wall[nginx]}")" "$(med "${storm_wall[varnish-malloc]}")" "$(med "${storm_wall[varnish-file]}")"
row "200 × cached 64 MiB zip: wall" s lower "$(med "${warm_wall[edge]}")" "$(med "${warm_wall[nginx]}")" "$(med "${warm_wall[varnish-malloc]}")" "$(med "${warm_wall[varnish-file]}")"
for r in small-random small-1000-conns zip-16KiB zip-1MiB zip-4MiB spread-256KiB spread-16KiB zip-64MiB revalidate-16KiB range-1KiB-of-1MiB; do
  unit=req/s; [ $r = zip-64MiB ] && unit=MB/s
  row "hits $r" $unit higher "$(med "${hit[$r-edge]}")" "$(med "${hit[$r-nginx]}")" "$(med "${hit[$r-varnish-malloc]}")" "$(med "${hit[$r-varnish-file]}")"
done
row "p99 of hits small-1000-conns" ms lower "$(med "${hit[small-1000-conns-p99-edge]}")" "$(med "${hit[small-1000-conns-p99-nginx]}")" "$(med "${hit[small-1000-conns-p99-varnish-malloc]}")" "$(med "${hit[small-1000-conns-p99-varnish-file]}")"
row "cold stream, 20 000 new .info, 10 conns" req/s higher "$(med "${stream[edge]}")" "$(med "${stream[nginx]}")" "$(med "${stream[varnish-malloc]}")" "$(med "${stream[varnish-file]}")"
row "cold stream, 20 000 new 16 KiB zips, 10 conns" req/s higher "$(med "${zips[edge]}")" "$(med "${zips[nginx]}")" "$(med "${zips[varnish-malloc]}")" "$(med "${zips[varnish-file]}")"
echo
echo "whole path (edge + modcdn-origin), cold .info/.mod, 1000 sequential GETs:"
echo "  static origin direct p50 ${full_direct} µs; edge + origin p50 ${full_cold} µs; added $(awk -v a="$full_cold" -v d="$full_direct" 'BEGIN {printf "%.2f", (a - d) / 1000}') ms (target ≤ 1.0 ms)"
echo "cold rows: static origin direct p50 $(awk -v d="$d" 'BEGIN {printf "%.2f", d / 1000}') ms per 1 MiB zip"
echo "(medians of $REPS rounds; wrk runs of ${DUR} s; ratios > 1 mean the edge is ahead; for latency, wall"
echo " and request rows the ratio is peer ÷ edge. Targets: cold miss ≥ 1.0x nginx; stampede 1 request;"
echo " small and 16 KiB hits ≥ 1.2x nginx; 1 MiB hits and the 64 MiB fan-out ≥ 1.0x best Varnish)"
