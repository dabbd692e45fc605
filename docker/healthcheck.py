"""Docker healthcheck without curl: exit 0 when the service answers 200 on its ready route.

URL: $HEALTHCHECK_URL, else http://127.0.0.1:$PORT/v2/health/ready (https:// when the
service serves TLS: $SPLITDNN_TLS_CERT is set; the check then verifies it against
$SPLITDNN_TLS_CA and shows the service's own certificate, which a mutual-TLS tail or head
asks for). An argument replaces the path (``healthcheck.py /v2/health/live``).
"""

import os
import ssl
import sys
import urllib.request

cert, key, ca = (os.environ.get(f"SPLITDNN_TLS_{n}") for n in ("CERT", "KEY", "CA"))
scheme = "https" if cert else "http"
path = sys.argv[1] if len(sys.argv) > 1 else "/v2/health/ready"
url = os.environ.get("HEALTHCHECK_URL") or (
    f"{scheme}://127.0.0.1:{os.environ.get('PORT', '8000')}{path}"
)
context = None
if url.startswith("https://"):
    context = ssl.create_default_context(cafile=ca)
    if cert and key:
        context.load_cert_chain(cert, key)
try:
    with urllib.request.urlopen(
        url, timeout=float(os.environ.get("HEALTHCHECK_TIMEOUT", "4")), context=context
    ) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception as exc:  # any failure is "unhealthy"; say why in `docker inspect`
    print(f"{url}: {exc}", file=sys.stderr)
    sys.exit(1)
