"""mathsft: distil math reasoning from a teacher LLM into a student LLM."""

__version__ = "0.1.0"
