"""The side-by-side comparison Space: base and aligned models streaming answers to one prompt.

``build_app(SpaceSettings.from_env())`` builds it, ``launch(app)`` serves it; settings come from
environment variables (Space variables on the Hub), see ``SpaceSettings``.
"""

from safer_instruct.space.app import CompareApp, SpaceModels, build_app, launch
from safer_instruct.space.settings import SpaceSettings

__all__ = ["CompareApp", "SpaceModels", "SpaceSettings", "build_app", "launch"]
