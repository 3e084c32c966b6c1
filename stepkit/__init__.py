"""The stepkit core: the pod contract, errors, logging, secrets, safe files, results, CLI."""

__version__ = "0.1.0"
