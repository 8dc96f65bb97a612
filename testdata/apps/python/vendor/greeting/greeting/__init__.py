"""A tiny pure-Python package for imgforge's buildpack tests.

The sample app imports it to prove that the Python buildpack installed it from
the app's local wheelhouse (no index, no network).
"""

__version__ = "1.0"

# tests/buildpacks.rs looks for this string in what the app answers
MARKER = "greeting-wheel-1.0-d41c"


def hello(who):
    return "hello {} from greeting {} ({})".format(who, __version__, MARKER)
