#!/usr/bin/env bash
# Soak tests on a release build:
#   bash tests/soak.sh [ROUNDS]          crash safety (spec/APPEND.md §4): the kill test of
#                                        tests/grow.rs with many SIGKILLs at random instants
#                                        (default 3000)
#   bash tests/soak.sh readers [ROUNDS]  readers during writes (issue 14 item 5): the tests of
#                                        tests/readers.rs for many writer rounds (default 300)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = readers ]; then
    CHUNKWISE_READER_ROUNDS="${2:-300}" cargo test --release --features crash-points --test main \
        readers:: -- --nocapture
    exit
fi
CHUNKWISE_KILL_ROUNDS="${1:-3000}" cargo test --release --features crash-points --test main \
    grow::killed_appends_and_concats_leave_the_old_or_the_new_array -- --nocapture
