"""gruviz core: pure library code (schema, formats, synth, features, model, extract, stats, evaluate).

Functions here take arrays and plain arguments; no environment, no Prefect.
"""

__version__ = "0.1.0"
