#!/bin/sh
# Run a build command trusting the extra CA bundle passed as the build secret "ca_bundle"
# (a TLS-intercepting proxy's CA, a private package index's CA). The merged bundle lives
# only for the command; nothing is left in the image layer.
#
# Package sources left empty by the build arguments are unset, so pip falls back to its own
# configuration and defaults: this repository names no index.
set -eu
for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST; do
  eval "value=\${$var:-}"
  [ -n "$value" ] || unset "$var"
done
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
