"""Tuning methods: each decides which parameters a client trains (and adds any new modules).

A method is one file that registers itself; the federated loop never asks which method it runs.
"""
from fedft.methods.base import METHODS, Method, trainable_parameters  # noqa: F401
from fedft.methods import adapter, bias, full, head, layers, lora, prompt  # noqa: F401  (registration)
