import os
import sys
from pathlib import Path

from django.shortcuts import render


def index(request):
    version = (Path(__file__).resolve().parent.parent / "VERSION").read_text().strip()
    python = ".".join(map(str, sys.version_info[:2]))
    return render(
        request,
        "index.html",
        {"app": os.environ.get("APP"), "version": version, "python": python},
    )
