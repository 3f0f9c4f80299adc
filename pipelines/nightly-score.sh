#!/usr/bin/env bash
# Nightly batch job: score every open lead with the champion model and write the scores back
# to the CRM. No logic here: it only calls convert-leads.
#
#   CONVERT_DATA     the CRM export folder written by the nightly export (required)
#   CONVERT_OUT_URL  the CRM database URL, e.g. postgresql://scoring@crm-db:5432/crm (required;
#                    read from the environment so the password never reaches the command line)
#   MLFLOW_TRACKING_URI  the registry holding the champion (optional)
set -euo pipefail
: "${CONVERT_DATA:?set CONVERT_DATA to the export folder}"
: "${CONVERT_OUT_URL:?set CONVERT_OUT_URL to the CRM database URL}"
AS_OF="${CONVERT_AS_OF:-$(date -u +%Y-%m-%d)}"
exec convert-leads score --data "$CONVERT_DATA" --as-of "$AS_OF" --out env:CONVERT_OUT_URL \
  --rejects "${CONVERT_REJECTS:-rejects-$AS_OF.csv}" "$@"
