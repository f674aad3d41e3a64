"""Print pip's configured package sources as uv arguments, one per line (for setup.sh).

uv installs circuitdag's dependencies in seconds where pip takes about a minute, but it
reads none of pip's configuration (pip.conf files, PIP_* variables). This passes on the
settings that decide *what* gets installed: index-url, extra-index-url, find-links,
no-index and constraint files, so uv sees the same packages pip would. With ``--cert`` it
prints pip's certificate bundle instead (empty when none), for uv's SSL_CERT_FILE.

Where a setting is given in several places pip's order holds: a PIP_* variable over the
``[install]`` section over ``[global]``. Exits 1 (setup.sh then installs with pip) when
pip's configuration cannot be read, or when it sets anything else that can change what
is installed or how it is fetched (a proxy, trusted hosts, pre-releases, binary
policies, hashes...): uv is only used where it is known to install what pip would.
"""

from __future__ import annotations

import ast
import subprocess
import sys

FLAGS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url",
         "find-links": "--find-links", "constraint": "--constraint"}  # fmt: skip
SCOPES = (":env:", "install", "global")  # pip's precedence, strongest first
#: Settings that change nothing about what is installed (cert: passed as SSL_CERT_FILE).
HARMLESS = {"cert", "timeout", "default-timeout", "retries", "disable-pip-version-check", "no-cache-dir", "cache-dir",
            "progress-bar", "quiet", "verbose", "no-color", "no-input", "root-user-action", "no-compile", "config-file"}  # fmt: skip


def pip_settings() -> dict[str, str]:
    """pip's configured values by option name, the strongest scope winning."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True)
    found: dict[tuple[str, str], str] = {}
    for line in out.stdout.splitlines():
        key, sep, value = line.partition("=")
        scope, _, name = key.rpartition(".")
        if sep and scope in SCOPES:  # pip prints each value with %r; a list is whitespace-separated
            found[(scope, name)] = " ".join(str(ast.literal_eval(value)).split())
    names = {name for _, name in found}
    return {n: next(found[(s, n)] for s in SCOPES if (s, n) in found) for n in names}


def main() -> None:
    settings = pip_settings()
    other = sorted(set(settings) - set(FLAGS) - {"no-index"} - HARMLESS)
    if other:
        sys.exit(f"uv_args: pip is configured with {', '.join(other)}, which this does not pass on to uv")
    if sys.argv[1:] == ["--cert"]:
        print(settings.get("cert", ""))
        return
    for name, flag in FLAGS.items():
        for value in settings.get(name, "").split():
            print(flag)
            print(value)
    if settings.get("no-index", "").lower() in ("1", "true", "yes", "on"):
        print("--no-index")
    if "extra-index-url" in settings or "find-links" in settings:
        print("--index-strategy")  # pip takes the best version across all indexes; so does this
        print("unsafe-best-match")


if __name__ == "__main__":
    try:
        main()
    except (OSError, subprocess.CalledProcessError, ValueError, SyntaxError) as err:
        sys.exit(f"uv_args: cannot read pip's configuration ({err})")
