"""Model definitions: arguments from config.json, layers, attention, caches, transformer."""
