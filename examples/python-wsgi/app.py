"""A Flask app served through piku's `wsgi:` kind (uWSGI in the app's venv)."""

import os

from flask import Flask

app = Flask(__name__)


def version():
    if os.environ.get("VERSION"):
        return os.environ["VERSION"]
    try:
        with open("VERSION", encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


@app.route("/")
def hello():
    return f"hello from {os.environ.get('APP', 'unknown-app')} {version()}\n"


@app.route("/env/<key>")
def env(key):
    value = os.environ.get(key)
    if value is None:
        return f"{key} is not set\n", 404
    return value + "\n"
