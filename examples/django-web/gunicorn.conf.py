# Like Heroku's getting-started app, the server's settings live here; piku sets PORT and
# BIND_ADDRESS for every web process.
import os

bind = f"{os.environ.get('BIND_ADDRESS', '127.0.0.1')}:{os.environ.get('PORT', '5000')}"
workers = 2
accesslog = "-"
