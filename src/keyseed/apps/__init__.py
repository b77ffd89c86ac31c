"""keyseed.apps
~~~~~~~~~~~~

Applications on top of the sealed channel: the device app seam (:class:`DeviceApp`, the
scheme's device control unit) and the microwave demo, with its server-side recipe service
(a :class:`keyseed.server.apps.ServerApp`). Apps see an authenticated peer and bytes, never
keys, frames or connections.
"""

from __future__ import annotations

from .base import AppLink, DeviceApp
from .microwave import MicrowaveApp, RecipeService, load_recipes

__all__ = ["AppLink", "DeviceApp", "MicrowaveApp", "RecipeService", "load_recipes"]
