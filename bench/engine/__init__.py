"""bench/run's engine measurement: llama.cpp loading a model through a mount (measure.py)."""
