"""Backward-compatible alias: the RT Plan writer lives in `medtf.rt.rtplan_writer` (it is not synthetic-only)."""

from medtf.rt.rtplan_writer import *  # noqa: F401,F403
from medtf.rt.rtplan_writer import __all__  # noqa: F401
