"""The top layer: the `mlptrain` command (typer and rich live here and nowhere else). main.py registers the
commands of each command module in --help order; nothing registers itself on import."""
