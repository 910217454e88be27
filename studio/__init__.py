"""Creative Studio: product photo in, personalised ad creatives out, learned from clicks."""

__version__ = "0.1.0"
