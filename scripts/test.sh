#!/usr/bin/env bash
# Set up and run the whole test suite: installs the real peers the integration tests use
# (DCMTK and Orthanc with its ModalityWorklists plugin, from Debian), a virtual environment
# with the test dependencies, then ruff and pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
BRIDGE_EXTRAS="[test]"  # hl7apy (validate, strict mode) is a main dependency
source scripts/_venv.sh
missing=()
[ -x /usr/bin/findscu ] && [ -x /usr/bin/wlmscpfs ] && [ -x /usr/bin/dump2dcm ] || missing+=(dcmtk)
[ -x /usr/sbin/Orthanc ] && [ -e /usr/share/orthanc/plugins/libModalityWorklists.so ] || missing+=(orthanc)
[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || missing+=(chromium chromium-driver)
[ -x /usr/bin/strace ] || missing+=(strace)  # which commits wait for the disk (test_store.py)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (Debian)..."
  apt_install "${missing[@]}"
fi
# PostgreSQL for the store tests on both backends (tests/conftest.py): a server already
# listening on 127.0.0.1:5432 is used (CI machines have one; set PG_TEST_URL to
# point elsewhere); otherwise Debian's postgresql is installed and its cluster started.
if [ -z "${PG_TEST_URL:-}" ]; then
  pg_up() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
  if ! pg_up; then
    if ! command -v pg_ctlcluster >/dev/null; then
      echo "installing postgresql (Debian)..."
      apt_install postgresql
    fi
    version=$(ls /usr/lib/postgresql | sort -n | tail -1)
    as_root pg_ctlcluster "$version" main start || true
    for _ in $(seq 30); do pg_up && break; sleep 1; done
  fi
  # The test role and database (once; harmless when they exist). Needs the local
  # postgres superuser: on a server we cannot administer, set PG_TEST_URL instead.
  if command -v psql >/dev/null && id postgres >/dev/null 2>&1; then
    as_root su postgres -c "psql -q -v ON_ERROR_STOP=1" >/dev/null <<'SQL' || true
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bridge_test') THEN
    CREATE ROLE bridge_test LOGIN PASSWORD 'bridge_test';
  END IF;
END $$;
SQL
    as_root su postgres -c "psql -tAc \"SELECT 1 FROM pg_database WHERE datname = 'bridge_test'\"" \
      | grep -q 1 || as_root su postgres -c "createdb -O bridge_test bridge_test"
  fi
  export PG_TEST_URL="postgresql://bridge_test:bridge_test@127.0.0.1:5432/bridge_test"
fi
.venv/bin/ruff check .
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then
  # pytest's "no tests collected": a checkout without tests is broken, not green.
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit $rc
