"""The `cron1:` job: runs once a minute, prints one line and exits."""

import datetime
import os

print(f"cron job ran at {datetime.datetime.now().isoformat(timespec='seconds')} app={os.environ.get('APP')}", flush=True)
