"""statesvc: the single-writer state daemon of a text-to-speech dataset."""

__version__ = "0.1.0"
