# Helpers for the generated rules.


def target(path):
    """A stage path as Snakemake names it (without the trailing '/' that marks a directory)."""
    return path.rstrip("/")


def smk_path(path):
    """Stage paths ending in '/' are directory outputs."""
    return directory(target(path)) if path.endswith("/") else path
