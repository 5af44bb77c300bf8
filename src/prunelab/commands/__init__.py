"""CLI subcommands beyond the core ones in cli.py: each module defines ``add_parser(sub)``, which adds its
parser and sets ``handler`` (a function of the parsed args returning the exit code)."""
