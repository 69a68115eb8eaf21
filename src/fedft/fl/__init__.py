"""The federated loop and its parts: client training, strategies, payload encoding."""
