"""pydl's kernel benchmark suite: `python -m bench --help`."""
