#!/bin/sh
# Run a build command trusting the extra CA bundle passed as the build secret "ca_bundle"
# (a TLS-intercepting proxy's CA, a private package index's CA). The merged bundle lives
# only for the command; nothing is left in the image layer.
set -eu
secret=/run/secrets/ca_bundle
if [ -s "$secret" ] && grep -q 'BEGIN CERTIFICATE' "$secret"; then
  merged="$(mktemp)"
  cat /etc/ssl/certs/ca-certificates.crt "$secret" > "$merged"
  export PIP_CERT="$merged" SSL_CERT_FILE="$merged" REQUESTS_CA_BUNDLE="$merged"
  status=0
  "$@" || status=$?
  rm -f "$merged"
  exit "$status"
fi
exec "$@"
