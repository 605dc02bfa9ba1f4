#!/usr/bin/env python3
"""Reloads a graygate's rules until killed, for scale.sh's reload-under-load runs.

    reloader.py ADMIN_URL TOKEN RULES_FILE VARIANT_1 VARIANT_2 REST_SECONDS LOG

Each round rests REST_SECONDS (so the first reload comes after this process's own start),
puts the next variant in place of RULES_FILE (a hard link renamed over it: no copy), sends
`POST /-/reload` on one kept-alive connection and appends "<status> <seconds>" to LOG (the
format of curl's `%{http_code} %{time_total}`). One process for the whole run: a round costs
the client a rename and one request, not a fork of cp and curl, so what the run measures is
the reload's cost, not the reloader's (which shares a core with the load generator).
"""
import http.client
import os
import sys
import time
import urllib.parse


def main() -> None:
    url, token, rules, first, second, rest, log_path = sys.argv[1:8]
    address = urllib.parse.urlsplit(url)
    headers = {"Authorization": f"Bearer {token}", "Content-Length": "0"}
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    staged = rules + ".new"
    variants = [first, second]
    with open(log_path, "a", buffering=1) as log:
        for round_ in range(sys.maxsize):
            time.sleep(float(rest))
            if os.path.lexists(staged):
                os.unlink(staged)
            os.link(variants[round_ % 2], staged)
            os.replace(staged, rules)
            started = time.monotonic()
            try:
                connection.request("POST", address.path, headers=headers)
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                connection.close()  # reconnects on the next request
                status = 0
            log.write(f"{status} {time.monotonic() - started:.6f}\n")


if __name__ == "__main__":
    main()
