"""``twistd switchd``: command-line options and the service maker."""

from __future__ import annotations

from twisted.python import usage

from . import __version__
from .config import ConfigError, load


class Options(usage.Options):
    """twistd switchd [-c FILE]"""

    synopsis = "[-c FILE]"
    longdesc = (
        "Runs the switchd telecom switch. Settings come from the INI file given "
        "with -c (every key is optional; see etc/switchd.ini) and from "
        "SWITCHD_<SECTION>_<KEY> environment variables, which win over the file. "
        "Without -c the embedded defaults are used: an SQLite database under "
        "./switchd-state and the API on 127.0.0.1:8080."
    )
    optParameters = [
        ["config", "c", None, "Configuration file (INI)."],
    ]

    def opt_version(self) -> None:
        """Print the switchd version and exit."""
        print(f"switchd {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        try:
            self["loaded"] = load(self["config"])
        except ConfigError as e:
            raise SystemExit(f"switchd: configuration error: {e}") from None


def makeService(options: Options):
    from twisted.internet import reactor

    from .config import ConfigError
    from .service import StartupError, make_service

    try:
        return make_service(options["loaded"], reactor)
    except ConfigError as e:
        raise SystemExit(f"switchd: configuration error: {e}") from None
    except StartupError as e:
        raise SystemExit(f"switchd: {e}") from None
