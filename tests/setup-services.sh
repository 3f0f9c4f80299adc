#!/usr/bin/env bash
# Make sure the services the tests talk to are up (PostgreSQL on 127.0.0.1:5432) and that
# Debian's headless chromium is there for the report test. Under CI=true a missing server or
# browser is an error in the tests themselves, not here.
set -u
if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
fi
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium (Debian) for tests/test_report.py"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) \
    >/tmp/convert-chromium-install.log 2>&1 || echo "chromium install failed: see /tmp/convert-chromium-install.log"
fi
exit 0
