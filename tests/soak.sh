#!/usr/bin/env bash
# Soak test for crash safety (spec/APPEND.md §4): the kill test of tests/grow.rs with many
# SIGKILLs at random instants (default 3000) on a release build.
#   bash tests/soak.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
CHUNKWISE_KILL_ROUNDS="${1:-3000}" cargo test --release --features crash-points --test main \
    grow::killed_appends_and_concats_leave_the_old_or_the_new_array -- --nocapture
