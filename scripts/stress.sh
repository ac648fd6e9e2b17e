#!/usr/bin/env bash
# Runs the broker-, camera- and timing-dependent test files many times in a row and counts
# the failed runs: a flaky test shows up here, not in one lucky run.
#
#   bash scripts/stress.sh [-n RUNS] [--load] [TEST_FILE...]
#
#   -n RUNS   runs of the whole set of files (default 8)
#   --load    keep the machine busy meanwhile: bench/store.py --quick in a loop beside
#             (the flakes came on a loaded 2-core machine)
#   files     default: the broker-, camera- and timing-dependent files listed below
#
# Each run is one pytest process over all the files (-x: stop at the first failure);
# the log of a failed run is kept under $STRESS_LOGS (default /tmp/motcua-stress).
# Prints "runs: N  failures: F" at the end and exits 1 if any run failed.
# Uses $PYTHON if set, else .venv/bin/python (scripts/install.sh creates it), else python3.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

runs=8
load=0
files=()
while [ $# -gt 0 ]; do
    case "$1" in
        -n) runs="$2"; shift 2 ;;
        --load) load=1; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) files+=("$1"); shift ;;
    esac
done
if [ ${#files[@]} -eq 0 ]; then
    files=(tests/test_sync_broker.py tests/test_broker_fixture.py tests/test_sync_security.py
           tests/test_sync_reports.py tests/test_sync_rejects.py tests/test_sync_district.py
           tests/test_sync_enrol_photos.py tests/test_terminal_e2e.py tests/test_camera.py
           tests/test_session_video.py tests/test_kiosk_page.py tests/test_ops_doctor.py
           tests/test_ops_terminal.py tests/test_ops_metrics.py tests/test_ops_sdnotify.py
           tests/test_store_threads.py tests/test_store_crash.py)
fi
py="${PYTHON:-.venv/bin/python}"
[ -x "$py" ] || command -v "$py" >/dev/null || py=python3
logs="${STRESS_LOGS:-/tmp/motcua-stress}"
mkdir -p "$logs"

load_pid=""
stop_load() {
    if [ -n "$load_pid" ]; then
        kill -- "-$load_pid" 2>/dev/null
        wait "$load_pid" 2>/dev/null
        load_pid=""
    fi
}
trap 'stop_load; exit 130' INT TERM
if [ "$load" = 1 ]; then
    # its own process group, so that stop_load ends the loop and the benchmark it runs
    set -m
    ( while :; do PYTHONPATH=. "$py" bench/store.py --quick >/dev/null 2>&1 || sleep 1; done ) &
    load_pid=$!
    set +m
    echo "load: bench/store.py --quick in a loop (pid $load_pid)"
fi

failures=0
started=$(date +%s)
for i in $(seq 1 "$runs"); do
    log="$logs/run-$i.log"
    t0=$(date +%s)
    if "$py" -m pytest -x -q -p no:cacheprovider "${files[@]}" >"$log" 2>&1; then
        echo "run $i/$runs: ok ($(( $(date +%s) - t0 )) s) $(tail -n 1 "$log")"
        rm -f "$log"
    else
        failures=$((failures + 1))
        echo "run $i/$runs: FAILED ($(( $(date +%s) - t0 )) s), log: $log"
        grep -E '^(FAILED|ERROR) ' "$log" | head -n 5
    fi
done
stop_load
echo "runs: $runs  failures: $failures  ($(( $(date +%s) - started )) s, load beside: $([ "$load" = 1 ] && echo 'bench/store.py --quick loop' || echo none))"
[ "$failures" -eq 0 ]
