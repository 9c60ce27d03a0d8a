# Helpers for the generated rules.


def smk_path(path):
    """Stage paths ending in '/' are directory outputs."""
    return directory(path.rstrip("/")) if path.endswith("/") else path
