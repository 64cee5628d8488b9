"""A plain WSGI callable served by waitress (a poetry dependency) on $BIND_ADDRESS:$PORT."""

import os

from waitress import serve


def version():
    try:
        with open("VERSION", encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def app(environ, start_response):
    body = f"hello from {os.environ.get('APP')} poetry {version()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


if __name__ == "__main__":
    serve(app, host=os.environ["BIND_ADDRESS"], port=int(os.environ["PORT"]))
