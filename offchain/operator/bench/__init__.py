"""Benchmarks behind `clearhouse bench ...`: each module has run(out_path, ...) -> dict and writes JSON."""
