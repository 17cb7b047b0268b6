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
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (Debian)..."
  apt_install "${missing[@]}"
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
