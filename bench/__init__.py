"""Benchmark of the two export paths of `ezrunner pack`: the fast archive writer versus docker build + save.

Run it with ``python -m bench`` (or ``scripts/bench``); ``python -m bench --help`` lists the options.
It is not a test: it writes several GB and takes minutes.
"""
