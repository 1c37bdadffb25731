"""Benchmark harness: the same model and the same closed-loop load against several LLM servers.

Run `python -m bench` from the repository root; see bench/README.md.
"""
