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
TARGETS="${FUZZ_TARGETS:-ioctl differential config iommufd}"
SANITIZER="${FUZZ_SANITIZER:-address}"
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi

cargo fuzz build -O --sanitizer "$SANITIZER"

# The targets run side by side (about a minute of wall time in all); each
# still gets its full FUZZ_SECONDS.
pids=()
for t in $TARGETS; do
  work="target/ci-corpus/$t"
  mkdir -p "$work" "artifacts/$t"
  echo "fuzz: $t for ${SECONDS_PER_TARGET}s"
  # -rss_limit_mb: the targets stay far below it; exceeding it is a failure
  # (unbounded growth). The BoundedAlloc of each target refuses any single
  # allocation above 64 MiB.
  cargo fuzz run -O --sanitizer "$SANITIZER" "$t" "$work" "corpus/$t" -- \
    -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -timeout=20 \
    -print_final_stats=1 >"target/fuzz-$t.log" 2>&1 &
  pids+=("$!")
done

status=0
i=0
for t in $TARGETS; do
  log="target/fuzz-$t.log"
  if wait "${pids[$i]}"; then
    grep -E '^Done|stat::peak_rss_mb' "$log" | sed "s/^/fuzz: $t: /"
  else
    status=1
    echo "fuzz: $t FAILED; the end of its log:"
    tail -60 "$log"
    ls -l "artifacts/$t" || true
  fi
  i=$((i + 1))
done
exit $status
