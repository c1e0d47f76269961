#!/usr/bin/env bash
# System packages the tests use: PostgreSQL 15 server binaries (a throwaway cluster per
# test session), Redis (the Celery broker of tests/test_celery.py, one server per test) and
# Chromium (the dashboard screenshot test). Debian package names; needs root.
# Skipped quietly where they are already present or apt is unavailable; the tests that
# need them then skip with a reason.
set -uo pipefail
need=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "setup_system: missing ${need[*]}; install them to run every test" >&2
  exit 0
fi
echo "setup_system: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
  || echo "setup_system: could not install ${need[*]}" >&2
exit 0
