"""Shared base of every layer: the error type, atomic file writes, artifact sidecars.

Imports only the standard library, so device-side code (Python 3.8, no torch) can use it.
"""
