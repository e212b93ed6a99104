"""--nproc / --hosts: where a verb's ranks run, shared by `lora train`, `data build` and `eval`
(each settings dataclass gets the two fields from `nproc_field()` / `hosts_field()`). Imports no
MLX, so --help and the forms load fast.

A hostfile is mlx.launch's JSON (mlx/_distributed_utils/common.py, Hostfile):

    {"hosts": [{"ssh": "mac1.local", "ips": ["192.168.2.1"]},
               {"ssh": "mac2.local", "ips": ["192.168.2.2"]}]}

(or the bare list of hosts). Rank r runs on hosts[r]; the ring backend talks over each host's
first IP. Every problem is reported naming the file and the field before anything starts."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path

RANK_FIELDS = ("nproc", "hosts")  # the settings the CLI keeps from the engine: where it runs, not what
GROUP = "ranks (past one process)"
HOSTFILE_FORMAT = ('{"hosts": [{"ssh": "mac1.local", "ips": ["192.168.2.1"]}, '
                   '{"ssh": "mac2.local", "ips": ["192.168.2.2"]}]}')


def _meta(help: str, metavar: str, form: bool, extra: dict) -> dict:
    # the metadata keys every verb's settings fields carry (the CLI and the forms read them)
    return {"help": help, "choices": None, "flag": None, "metavar": metavar, "form": form, "group": GROUP, **extra}


def nproc_field(form: bool = False, **extra):
    """The `nproc` field of a verb's settings dataclass."""
    return field(default=1, metadata=_meta(
        "processes on this machine, one rank each (MLX's ring backend over loopback); rank 0 writes the "
        "events and outputs", "N", form, extra))


def hosts_field(form: bool = False, **extra):
    """The `hosts` field of a verb's settings dataclass."""
    return field(default="", metadata=_meta(
        "an mlx.launch JSON hostfile: one rank per host (ssh name and ring IPs), e.g. two Macs; the first "
        "host is rank 0, which writes the events and outputs: list this machine first", "HOSTFILE", form, extra))


@dataclass(frozen=True)
class Host:
    rank: int
    ssh: str
    ips: tuple[str, ...]


@dataclass(frozen=True)
class Ranks:
    """Where a verb's ranks run: `nproc` processes here, or one per host of the `hosts` file."""

    nproc: int = 1
    hosts: str = ""

    @classmethod
    def of(cls, settings) -> "Ranks | None":
        """The ranks a settings object or dict asks for; None when it has no such fields."""
        get = settings.get if isinstance(settings, dict) else (lambda k, d=None: getattr(settings, k, d))
        if settings is None or get("nproc") is None and get("hosts") is None:
            return None
        return cls(get("nproc") or 1, get("hosts") or "")

    @property
    def spread(self) -> bool:
        """More than one rank: the CLI becomes the supervisor of an mlx.launch."""
        return self.nproc > 1 or bool(self.hosts)

    def problems(self) -> list[tuple[str, str, str]]:
        """Every bad value as (flag, message, hint), as the other settings report theirs."""
        out = []
        if not isinstance(self.nproc, int) or self.nproc < 1:
            out.append(("nproc", f"--nproc: {self.nproc!r} must be a whole number, at least 1",
                        "--nproc 2 runs two processes on this machine"))
        if self.hosts and self.nproc > 1:
            out.append(("nproc", "--nproc and --hosts: give one of them",
                        "--nproc N for processes on this machine, --hosts FILE for one per host of the file"))
        if self.hosts:
            try:
                read_hostfile(self.hosts)
            except ValueError as e:
                out.append(("hosts", f"--hosts: {e}", f"a hostfile looks like {HOSTFILE_FORMAT}"))
        return out

    def check(self) -> "Ranks":
        """The first bad value as a HumanizerError naming its flag (and the file and field)."""
        from engine.errors import HumanizerError

        for _, message, hint in self.problems()[:1]:
            raise HumanizerError(message, hint)
        return self

    def plan(self, local_host: str) -> list[Host]:
        """One Host per rank: `nproc` times this machine (loopback), or the hostfile's hosts."""
        if self.hosts:
            return read_hostfile(self.hosts)
        return [Host(r, local_host, ("127.0.0.1",)) for r in range(self.nproc)]


def read_hostfile(path: str | Path) -> list[Host]:
    """The hosts of an mlx.launch hostfile, checked for the ring backend; a ValueError naming the
    file and the field otherwise."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{p}: not JSON ({e})") from None
    if isinstance(data, dict):
        if data.get("backend") not in (None, "", "ring"):
            raise ValueError(f"{p}: field 'backend' is {data['backend']!r}; humanizer launches the ring backend")
        envs = data.get("envs", [])
        if not isinstance(envs, list) or not all(isinstance(e, str) and "=" in e for e in envs):
            raise ValueError(f"{p}: field 'envs' must be a list of \"NAME=value\" strings")
        if "hosts" not in data:
            raise ValueError(f"{p}: field 'hosts' is missing")
        data = data["hosts"]
    if not isinstance(data, list) or not data:
        raise ValueError(f"{p}: field 'hosts' must be a non-empty list of hosts")
    hosts = []
    for i, h in enumerate(data):
        where = f"{p}: hosts[{i}]"
        if not isinstance(h, dict):
            raise ValueError(f"{where} must be an object with 'ssh' and 'ips'")
        if not isinstance(h.get("ssh"), str) or not h["ssh"].strip():
            raise ValueError(f"{where}.ssh is missing: the name to ssh into (this machine's too)")
        ips = h.get("ips")
        if not isinstance(ips, list) or not ips:
            raise ValueError(f"{where}.ips is missing: the ring backend needs an IP the other hosts reach "
                             "(Thunderbolt or Ethernet)")
        for j, ip in enumerate(ips):
            try:
                ipaddress.ip_address(ip)
            except (ValueError, TypeError):
                raise ValueError(f"{where}.ips[{j}]: {ip!r} is not an IP address") from None
        hosts.append(Host(i, h["ssh"].strip(), tuple(ips)))
    return hosts


def processes_flags(text: str) -> tuple[list[str], str | None]:
    """The Train form's "processes/hosts" field as flags: '' or 1 -> none, a number N -> --nproc N,
    anything else is a hostfile path -> --hosts PATH (checked); or an error."""
    text = text.strip()
    if not text or text == "1":
        return [], None
    if text.isdigit():
        ranks = Ranks(nproc=int(text))
        flags = ["--nproc", text]
    else:
        ranks = Ranks(hosts=str(Path(text).expanduser().resolve()))
        flags = ["--hosts", ranks.hosts]
    problems = ranks.problems()
    return (flags, None) if not problems else ([], problems[0][1])
