"""Export formats (each a plugin) and the bundle that ships both towers."""
