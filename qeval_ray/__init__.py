"""qeval-ray: score AI-generated images and videos with Q-Eval-Score on Ray."""

__version__ = "0.1.0"
