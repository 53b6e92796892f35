"""The namespace the measurement modules (engine/measure.py, passthrough.py,
tensor.py) receive as `core`: bench/run's process helpers, registry and report
helpers under one name, as they were when bench/run was one file."""
from .constants import *  # noqa: F401,F403
from .proc import *  # noqa: F401,F403
from .registry import DockerRegistry, Served, make_model, models, push_model, size_name  # noqa: F401
from .report import fmt3, ratios, status_note, summary, tool_values  # noqa: F401
