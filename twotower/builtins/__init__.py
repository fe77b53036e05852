"""Built-in plugins: each module implements the public hooks, like any third party."""
