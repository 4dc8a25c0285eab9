"""octo-gateway: hotel PMS pushes in, signed OCTO webhooks out."""

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    """The installed distribution's version ("0" in a source tree never installed)."""
    try:
        return version("octo-gateway")
    except PackageNotFoundError:
        return "0"
