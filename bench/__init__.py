"""Ludus benchmark suite: `python -m bench.run --short|--full|--smoke [--only NAME,...] [--out DIR]`."""
