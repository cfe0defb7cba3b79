#!/usr/bin/env bash
# libFuzzer runs of the key parser (B3) and the guarded RESP reader (B4), built with
# `-sanitize=fuzzer,address`. Bounded: SECONDS_PER_TARGET each (default 60; scripts/test.sh uses 20).
# Memory: no single allocation over 64 MiB (-malloc_limit_mb: a `$1000000000` bulk string must not
# be buffered) and RSS under 160 MiB (a Swift binary under ASan starts near 70 MiB).
#
#   fuzz/run.sh [seconds per target]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
flags=(-Xswiftc "-sanitize=fuzzer,address" -Xswiftc -parse-as-library)
swift build --product fuzz-key "${flags[@]}"
swift build --product fuzz-resp "${flags[@]}"
bin=$(swift build --show-bin-path "${flags[@]}")
work=$(mktemp -d -t keygate-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT
for target in key resp; do
    mkdir -p "$work/$target"
    cp corpus/"$target"/* "$work/$target/"
    echo "== fuzz-$target for ${seconds}s"
    status=0
    # A small ASan quarantine: freed memory held back to catch use-after-free would otherwise
    # look like growth to the RSS limit.
    (cd "$work" && ASAN_OPTIONS=quarantine_size_mb=8 "$bin/fuzz-$target" -max_total_time="$seconds" -rss_limit_mb=160 -malloc_limit_mb=64 -max_len=4096 \
        -print_final_stats=1 "$work/$target" > "$work/$target.log" 2>&1) || status=$?
    grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb)" "$work/$target.log" || true
    if [ "$status" -ne 0 ]; then
        # A crash, a leak, a timeout or the RSS limit: show libFuzzer's report and the input.
        grep -E -A30 "==[0-9]+==ERROR|deadly signal|out-of-memory|Test unit written" "$work/$target.log" | head -60 >&2
        echo "error: fuzz-$target failed (exit $status)" >&2
        exit 1
    fi
done
echo "fuzzing passed"
