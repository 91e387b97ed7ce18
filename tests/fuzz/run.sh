#!/usr/bin/env bash
# Fuzzing campaign: libFuzzer (cargo fuzz, nightly Rust, AddressSanitizer)
# on every parser that reads network input (fuzz/fuzz_targets/): GOPROXY
# request paths, module/version escaping, semver, tlog tiles and records,
# signed notes, go.mod/go.sum, purge targets, hot reports, module zips.
# Seeds are real inputs of each format, written here. Not part of CI (it
# needs nightly and minutes per target); the property tests in
# shared/tests/fuzz.rs run the same properties in every CI run.
# Usage: tests/fuzz/run.sh [seconds-per-target]   (default 300)
# Prints each target's executions; a crash stops it with the input saved
# under fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS="${1:-300}"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version 0.13.1 --locked
python3 - <<'PY'
import io, os, zipfile
def seed(target, name, data):
    os.makedirs(f"fuzz/corpus/{target}", exist_ok=True)
    with open(f"fuzz/corpus/{target}/{name}", "wb") as f:
        f.write(data)
texts = {
    0: ["/github.com/!azure/sdk/@v/v1.2.3.zip", "/example.com/m/v2/@v/v2.0.0-20191109021931-daa7c04131f5.info",
        "/gopkg.in/yaml.v2/@v/v2.4.0+incompatible.mod", "/example.com/m/@v/list", "/example.com/m/@latest",
        "/sumdb/sum.golang.org/lookup/example.com/m@v1.0.0", "/sumdb/sum.golang.org/tile/8/0/x001/234.p/5",
        "/sumdb/sum.golang.org/tile/8/data/000", "/sumdb/sum.golang.org/supported"],
    1: ["github.com/Azure/SDK", "gopkg.in/yaml.v2", "example.com/m/v2", "v1.0.0-RC1", "github.com/!azure/sdk"],
    2: ["v1.2.3\nv1.10.0", "v2.0.0+incompatible\nv0.0.0-20191109021931-daa7c04131f5"],
    3: ["tile/8/0/x001/234.p/5", "tile/8/data/000", "go.sum database tree\n1234\nnND/nri/U0xuHUrYSy0HtMeal2vzD9V4k/BO79C+QeI=\n",
        "5\nexample.com/m v1.0.0 h1:abc=\nexample.com/m v1.0.0/go.mod h1:def=\n\n"],
    4: ["go.sum database tree\n5\nAAAA\n\n\u2014 sum.golang.org Az3grnmrIhhGEQ==\n"],
    5: ["module example.com/m\n\ngo 1.19\n\nrequire (\n\texample.com/a v1.0.0\n\texample.com/b v1.2.0 // indirect\n)\n",
        "example.com/a v1.0.0 h1:abc=\nexample.com/a v1.0.0/go.mod h1:def=\n"],
    6: ["github.com/!azure/sdk/@v/v1.2.3.zip\ngithub.com/Azure/SDK"],
    7: ["example.com/a 3\nexample.com/b 1e308\nexample.com/c -1"],
}
for pick, samples in texts.items():
    for i, t in enumerate(samples):
        seed("parsers", f"seed-{pick}-{i}", bytes([pick]) + t.encode())
z = io.BytesIO()
with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as w:
    w.writestr("example.com/m@v1.0.0/go.mod", "module example.com/m\n")
    w.writestr("example.com/m@v1.0.0/m.go", "package m\n\nconst X = 1\n")
    w.writestr("example.com/m@v1.0.0/sub/LICENSE", "MIT\n")
seed("modzip", "seed-module", z.getvalue())
PY
cd fuzz
for target in parsers modzip; do
  log="$(mktemp)"
  cargo +nightly fuzz run "$target" "corpus/$target" -- -max_total_time="$SECS" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || { tail -40 "$log"; exit 1; }
  runs="$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | tail -1)"
  cov="$(grep -o 'cov: [0-9]*' "$log" | tail -1)"
  echo "$target: $runs(s), $cov, 0 crashes"
  rm -f "$log"
done
