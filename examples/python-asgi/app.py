"""An ASGI app (plain `async def`, no framework) behind piku's `wsgi:` kind: `UWSGI_ASYNCIO`
in ENV says the entry is ASGI, so the build installs granian and runs it with
`--interface asgi`. FastAPI or Starlette apps are served the same way."""

import asyncio
import os

started = False


async def app(scope, receive, send):
    global started
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                started = True
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    # An await in the request path: the worker serves others meanwhile.
    await asyncio.sleep(0)
    body = (
        f"hello from {os.environ.get('APP', 'unknown-app')} asgi lifespan={started}\n"
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
