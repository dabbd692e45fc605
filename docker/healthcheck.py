"""Docker healthcheck without curl: exit 0 when the service answers 200 on its ready route.

URL: $HEALTHCHECK_URL, else http://127.0.0.1:$PORT/v2/health/ready.
"""

import os
import sys
import urllib.request

url = os.environ.get("HEALTHCHECK_URL") or (
    f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/v2/health/ready"
)
try:
    with urllib.request.urlopen(
        url, timeout=float(os.environ.get("HEALTHCHECK_TIMEOUT", "4"))
    ) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception as exc:  # any failure is "unhealthy"; say why in `docker inspect`
    print(f"{url}: {exc}", file=sys.stderr)
    sys.exit(1)
