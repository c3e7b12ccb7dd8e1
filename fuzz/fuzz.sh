#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer and sanitizer coverage on stable rustc, then runs
# each for FUZZ_TIME seconds (default 60), one after another. See fuzz/README.md.
#
#   fuzz/fuzz.sh                  build, then run every target
#   fuzz/fuzz.sh wire stack       build, then run those targets
#   fuzz/fuzz.sh --build          build only
#
# Exit status 1 if any target found a crash (a panic, a failed check, a timeout or an
# out-of-memory); the input is left in target/fuzz/artifacts/<target>/. Inputs that found
# new coverage accumulate in target/fuzz/corpus/<target>/ (the committed seeds in
# fuzz/corpus/<target>/ are only read).
set -euo pipefail
cd "$(dirname "$0")"
FUZZ_TIME=${FUZZ_TIME:-60}
# smoltcp with the project's patches, which the fuzz package points at as the root does.
python3 ../tools/patch_smoltcp.py
host=$(rustc -vV | sed -n 's/^host: //p')
out=${FUZZ_OUT:-$PWD/../target/fuzz}
export CARGO_TARGET_DIR=$out/build
# What cargo-fuzz passes, minus the sanitizer (AddressSanitizer needs nightly): libFuzzer's
# coverage feedback (8-bit counters, PC table, comparison tracing). With --target, cargo
# applies RUSTFLAGS to the targets only, not to build scripts and proc macros (which would
# not link against libFuzzer's symbols). Debug assertions and overflow checks are on in
# fuzz/Cargo.toml's release profile.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
all=(wire router_ip router_ethernet tunnel_datagram tunnel_session relay_server relay_node stack)
cargo build --release --features libfuzzer --target "$host" "${all[@]/#/--bin=}"
if [[ ${1:-} == --build ]]; then
    exit 0
fi
targets=("${@:-${all[@]}}")
if (($# == 0)); then targets=("${all[@]}"); fi
failed=()
for t in "${targets[@]}"; do
    bin=$CARGO_TARGET_DIR/$host/release/$t
    [[ -x $bin ]] || { echo "no fuzz target $t (targets: ${all[*]})" >&2; exit 2; }
    mkdir -p "$out/corpus/$t" "$out/artifacts/$t" "$out/logs"
    log=$out/logs/$t.log
    echo "fuzz: $t for ${FUZZ_TIME}s (log: $log)"
    # New inputs go to the first corpus directory; the seeds are read only.
    if "$bin" -max_total_time="$FUZZ_TIME" -max_len=4096 -len_control=0 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$out/artifacts/$t/" \
        "$out/corpus/$t" "corpus/$t" >"$log" 2>&1; then
        grep -E '^stat::number_of_executed_units|^#[0-9]+.*DONE' "$log" | tail -2 | sed "s/^/  /"
    else
        failed+=("$t")
        echo "fuzz: $t FAILED:" >&2
        grep -E 'panicked|ERROR|SUMMARY|Test unit written' -A3 "$log" | head -30 >&2
    fi
done
if ((${#failed[@]})); then
    echo "fuzz: crashes in ${failed[*]}; inputs in $out/artifacts/<target>/" >&2
    exit 1
fi
