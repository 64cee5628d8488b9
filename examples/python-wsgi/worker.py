"""A background `worker:` that proves it is alive by printing a tick every few seconds."""

import os
import time

n = 0
while True:
    n += 1
    print(f"worker tick {n} pid={os.getpid()}", flush=True)
    time.sleep(3)
