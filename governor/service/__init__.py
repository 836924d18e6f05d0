"""``governor serve``: the durable service, its store, its control socket and its task files.

_service.py    load, recover, serve; SIGHUP reloads, SIGTERM stops
_control.py    the control socket (status, fire)
_store.py      the embedded SQLite store
_schema.py     an execution record <-> its stored row and its dict form, in one place
_taskfile.py   TOML task files, validated when read
_estimates.py  estimates seeded from stored history
"""

# The log's levels and formats, here so the command line offers them without loading logging.
LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
