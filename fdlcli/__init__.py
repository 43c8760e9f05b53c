"""fdl: the experiments of *Fundamentals of Deep Learning* as a PyTorch command-line runner."""

__version__ = "0.1.0"
