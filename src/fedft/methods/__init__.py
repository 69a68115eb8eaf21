"""Tuning methods: each decides which parameters a client trains (and adds any new modules).

A method is one file that registers itself (discovered: no import list); the federated loop never asks which
method it runs.
"""
from fedft.methods.base import METHODS, Method, trainable_parameters  # noqa: F401
from fedft.registry import discover

discover(__name__)
