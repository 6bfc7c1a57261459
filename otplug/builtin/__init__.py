"""Built-in plugins. Each module here is an ordinary plugin registered through an ``otplug`` entry point in
otplug's own ``pyproject.toml`` -- exactly the path a third-party plugin takes."""
