"""A Flask app served through piku's `wsgi:` kind; uv installs its dependencies."""

import os
import sys

from flask import Flask

app = Flask(__name__)


def version():
    try:
        with open("VERSION", encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


@app.route("/")
def hello():
    python = ".".join(map(str, sys.version_info[:2]))
    return f"hello from {os.environ.get('APP')} uv {version()} (python {python})\n"
