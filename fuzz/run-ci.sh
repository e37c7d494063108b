#!/usr/bin/env bash
# Builds every fuzz target and runs each for a bounded time; fails on any
# crash, panic, leak check or oversized allocation.
#
#   fuzz/run-ci.sh              # 60 s per target (CI)
#   FUZZ_SECONDS=600 fuzz/run-ci.sh
#   FUZZ_TARGETS="ioctl" fuzz/run-ci.sh
#
# Only stable Rust is installed. cargo-fuzz passes nightly-only flags
# (-Zsanitizer=address, sanitizer-coverage); RUSTC_BOOTSTRAP=1 lets the
# stable compiler accept them, so the targets run with AddressSanitizer and
# coverage feedback. FUZZ_SANITIZER=none builds without ASan (faster).
# The seeds in corpus/<target>/ are read; what the run finds goes to
# target/ci-corpus/<target>/ (not committed). Crashes go to
# artifacts/<target>/ and fail the script.
set -euo pipefail
cd "$(dirname "$0")"

SECONDS_PER_TARGET="${FUZZ_SECONDS:-60}"
TARGETS="${FUZZ_TARGETS:-ioctl differential config}"
SANITIZER="${FUZZ_SANITIZER:-address}"
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi

cargo fuzz build -O --sanitizer "$SANITIZER"

status=0
for t in $TARGETS; do
  work="target/ci-corpus/$t"
  mkdir -p "$work" "artifacts/$t"
  log="target/fuzz-$t.log"
  echo "fuzz: $t for ${SECONDS_PER_TARGET}s"
  # -rss_limit_mb: the targets stay far below it; exceeding it is a failure
  # (unbounded growth). The BoundedAlloc of each target refuses any single
  # allocation above 64 MiB.
  if cargo fuzz run -O --sanitizer "$SANITIZER" "$t" "$work" "corpus/$t" -- \
      -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -timeout=20 \
      -print_final_stats=1 >"$log" 2>&1; then
    grep -E '^Done|stat::number_of_executed_units|stat::peak_rss_mb' "$log" | sed "s/^/fuzz: $t: /"
  else
    status=1
    echo "fuzz: $t FAILED; the end of its log:"
    tail -60 "$log"
    ls -l "artifacts/$t" || true
  fi
done
exit $status
