#!/usr/bin/env bash
# Builds the keygate binary the way it ships (release) and prints its path on stdout.
#
#   scripts/build-release.sh [swift build arguments, e.g. --static-swift-stdlib]
#
# Release builds turn off Swift's run-time exclusivity checks in every module, SwiftNIO included
# (-enforce-exclusivity=unchecked): they are a debugging aid against overlapping accesses to class
# properties and globals, and cost the hit path about 4% of its throughput (benchmarks/README.md,
# "Build settings"). The compile-time checks stay, and the tests run a debug build with both.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/packages.sh
swift build "${release_flags[@]}" --product keygate "$@" >&2
echo "$(swift build "${release_flags[@]}" --show-bin-path)/keygate"
