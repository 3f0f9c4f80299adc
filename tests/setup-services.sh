#!/usr/bin/env bash
# Make sure the services the tests talk to are up (PostgreSQL on 127.0.0.1:5432).
# Under CI=true a missing server is an error in the tests themselves, not here.
set -u
if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
fi
exit 0
