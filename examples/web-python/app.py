"""A plain `web:` app: Python's standard library only, so piku treats it as a generic app.

It binds $BIND_ADDRESS:$PORT (both set by piku), answers `/` with who and what it is, and
`/env/<KEY>` with one environment variable, so tests can see `config:set` take effect.
`/up` is a health check for `PIKU_HEALTHCHECK=/up`: it answers with the status in
`$UP_STATUS` (default 200), so a release can be made that never becomes healthy. A request
with `Upgrade: echo` is switched (101) to a raw echo of whatever the client sends, to show
that upgrades pass through nginx and the front. Every request is printed, so tests can find
it in `piku logs`.
"""

import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

APP = os.environ.get("APP", "unknown-app")


def version():
    # An env override (config:set VERSION=...) wins over the file that ships with the code.
    if os.environ.get("VERSION"):
        return os.environ["VERSION"]
    try:
        with open("VERSION", encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        print(f"request {self.path}", flush=True)
        if self.headers.get("Upgrade", "").lower() == "echo":
            self.echo()
            return
        if self.path == "/up":
            status = int(os.environ.get("UP_STATUS", "200"))
            self.reply(status, f"up status={status}\n")
            return
        if self.path.startswith("/env/"):
            key = self.path[len("/env/"):]
            value = os.environ.get(key)
            if value is None:
                self.reply(404, f"{key} is not set\n")
            else:
                self.reply(200, value + "\n")
            return
        greeting = os.environ.get("GREETING", "hello")
        self.reply(200, f"{greeting} from {APP} pid={os.getpid()} version={version()}\n")

    def echo(self):
        self.send_response(101)
        self.send_header("Upgrade", "echo")
        self.send_header("Connection", "Upgrade")
        self.end_headers()
        self.wfile.flush()
        while True:
            data = self.rfile.read1(4096)
            if not data:
                break
            self.wfile.write(data)
            self.wfile.flush()
        self.close_connection = True

    def reply(self, status, text):
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        # The request line printed in do_GET is enough; keep stderr for real problems.
        pass


def main():
    address = os.environ.get("BIND_ADDRESS", "127.0.0.1")
    port = int(os.environ.get("PORT", "8000"))
    server = ThreadingHTTPServer((address, port), Handler)
    # Exit cleanly on SIGTERM so a stop is not reported as a crash.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"{APP} listening on {address}:{port} version={version()}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
