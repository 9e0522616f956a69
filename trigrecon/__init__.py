"""trigrecon: reverse-engineer the hidden trigger of a backdoored language model."""

__version__ = "0.1.0"
