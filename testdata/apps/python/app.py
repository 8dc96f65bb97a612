"""Sample web app for imgforge's buildpack tests (tests/buildpacks.rs).

Answers every GET on $PORT with a line that shows the greeting package (installed
by testdata/buildpacks/python from ./wheelhouse) and which python runs it.
"""

import http.server
import os
import sys

import greeting

MARKER = "imgforge-python-sample-4b1d"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = "{} {} python={} greeting-from={}\n".format(
            MARKER, greeting.hello("web"), sys.executable, os.path.dirname(greeting.__file__)
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    port = int(os.environ.get("PORT", "5000"))
    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler)
    print("listening on port {}".format(port), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
