"""Never runs: the build of this app fails (see requirements.txt)."""

print("this app should never have been activated", flush=True)
