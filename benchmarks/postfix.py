"""postfix's `smtp-sink`, fetched and unpacked by the bench itself (nothing is
installed, no service is started).

smtp-sink is a small C SMTP server that accepts and discards everything: about
0.15 ms of CPU per message here, thousands of messages/s from a few clients —
a sink that is not the bottleneck of a delivery figure. It ships in Debian's
`postfix` package, which the bench downloads with `apt-get download postfix`
and unpacks with `dpkg-deb -x` into a cache directory (BENCH_CACHE_DIR,
default ~/.cache/emailsvc-bench), once per machine. When that is not possible
(no apt-get, no package index reachable) `smtp_sink()` says why and the bench
falls back to its aiosmtpd sink (benchmarks/smtpsink.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

CACHE_DIR = Path(os.environ.get("BENCH_CACHE_DIR") or Path.home() / ".cache" / "emailsvc-bench")
POSTFIX_DIR = CACHE_DIR / "postfix"


@dataclass(frozen=True)
class SmtpSink:
    binary: Path
    library_dir: Path
    version: str  # the .deb's name, e.g. postfix_3.7.11-0+deb12u1_amd64

    def argv(self, host: str, port: int) -> list[str]:
        """smtp-sink on host:port, printing its running counters (`-c`) on stdout."""
        argv = [str(self.binary), "-c"]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]  # required when started as root (it drops privileges)
        return [*argv, f"{host}:{port}", "1000"]

    def env(self) -> dict[str, str]:
        library_path = os.pathsep.join(filter(None, [str(self.library_dir), os.environ.get("LD_LIBRARY_PATH", "")]))
        return {**os.environ, "LD_LIBRARY_PATH": library_path}


class PostfixUnavailable(Exception):
    """smtp-sink cannot be had on this machine; the message says why."""


def _unpacked() -> SmtpSink | None:
    for root in sorted(POSTFIX_DIR.glob("postfix_*"), reverse=True):
        if root.name.endswith(".partial"):
            continue
        binary, library_dir = root / "usr/sbin/smtp-sink", root / "usr/lib/postfix"
        if binary.is_file() and os.access(binary, os.X_OK):
            return SmtpSink(binary=binary, library_dir=library_dir, version=root.name)
    return None


def _download(directory: Path) -> Path:
    """`apt-get download postfix` into `directory`; the .deb. Updates the package
    lists once (root only) when the first try finds no package."""
    def attempt() -> subprocess.CompletedProcess:
        return subprocess.run(["apt-get", "download", "postfix"], cwd=directory, capture_output=True, text=True,
                              timeout=300)

    result = attempt()
    if result.returncode != 0 and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True, timeout=300)
        result = attempt()
    debs = sorted(directory.glob("postfix_*.deb"))
    if result.returncode != 0 or not debs:
        raise PostfixUnavailable(f"`apt-get download postfix` failed: {(result.stderr or result.stdout).strip()[-300:]}")
    return debs[-1]


def smtp_sink() -> SmtpSink:
    """The unpacked smtp-sink, fetching it first if this machine has none yet.
    Raises PostfixUnavailable (with the reason) when it cannot be had."""
    found = _unpacked()
    if found:
        return found
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise PostfixUnavailable(f"no `{tool}` on this machine")
    POSTFIX_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=POSTFIX_DIR) as scratch:
        scratch_dir = Path(scratch)
        os.chmod(scratch_dir, 0o755)  # apt-get may drop to the _apt user to write here
        deb = _download(scratch_dir)
        target = POSTFIX_DIR / deb.stem
        unpacking = POSTFIX_DIR / f"{deb.stem}.partial"
        shutil.rmtree(unpacking, ignore_errors=True)
        result = subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacking)], capture_output=True, text=True,
                                timeout=120)
        if result.returncode != 0:
            shutil.rmtree(unpacking, ignore_errors=True)
            raise PostfixUnavailable(f"`dpkg-deb -x` failed: {result.stderr.strip()[-300:]}")
        shutil.rmtree(target, ignore_errors=True)
        unpacking.rename(target)  # whole, or not at all: a killed run leaves only *.partial
    found = _unpacked()
    if not found:
        raise PostfixUnavailable(f"no usr/sbin/smtp-sink in {deb.name}")
    return found


if __name__ == "__main__":
    sink = smtp_sink()
    print(f"{sink.binary} ({sink.version})")
