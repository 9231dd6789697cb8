"""Runnable examples (each file has a __main__); a package so tests can import their builders."""
