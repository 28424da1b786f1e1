"""switchd: a carrier-grade telecom switch daemon on Twisted."""

__version__ = "0.1.0"
