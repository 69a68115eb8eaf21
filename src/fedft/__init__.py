"""fedft: federated fine-tuning of pre-trained transformers, training and sending only a few parameters."""
from fedft.api import Result, run  # noqa: F401
from fedft.config import Config, load_config  # noqa: F401
from fedft.errors import UsageError  # noqa: F401

__version__ = "0.1.0"
