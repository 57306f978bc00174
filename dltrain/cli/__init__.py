"""The `dltrain` command: one module per command, each registering its own parser (see main.py)."""
