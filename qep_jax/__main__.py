"""``python -m qep_jax`` is the ``qep-jax`` command line."""

from ._cli import entry_point

if __name__ == "__main__":
    entry_point()
