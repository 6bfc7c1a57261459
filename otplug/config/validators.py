"""The shared attrs validators, at their old address: they live in :mod:`otplug.validators` (a leaf that the config,
the solvers, the terms and plugins import alike, so no room of the house imports the config for them). This name
is the same module object."""

import sys

from otplug import validators as _validators

sys.modules[__name__] = _validators
