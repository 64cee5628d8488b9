"""A `release:` step that fails, like a database migration that cannot run."""

import sys

print("release: migration failed on purpose", file=sys.stderr, flush=True)
sys.exit(1)
