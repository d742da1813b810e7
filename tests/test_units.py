"""The fleet files in contrib/: systemd's own checker accepts the units, they
say what a fleet needs, and their commands run.  The service's ExecStart is
expanded as systemd expands it and run, with the example's environment file,
against a real service directory; the Kubernetes container's script is run
with the CronJob's mounts reproduced by bind mounts (a read-only service
volume, its lock files read-write) while another process holds an environment
open, as the service would."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.backup.service import backup_ok, service
from tests.backup.test_list_and_prune import fake_backup
from tests.conftest import IS_ROOT, make_env, run_cli

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "contrib" / "systemd"
SERVICE = SYSTEMD / "synfast-backup@.service"
TIMER = SYSTEMD / "synfast-backup@.timer"
EXAMPLE_ENV = SYSTEMD / "example.env"
OVERRIDE = SYSTEMD / "example-override.conf"
TMPFILES = SYSTEMD / "tmpfiles-synfast.conf"
CRONJOB = ROOT / "contrib" / "kubernetes" / "cronjob.yaml"
FLEET_DOC = ROOT / "docs" / "usage" / "fleet.md"
SYNFAST_BIN = Path(sys.executable).parent / "synfast"
ANALYZE = shutil.which("systemd-analyze")
INSTANCE = "cortex00"
#: The PATH systemd gives services.
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NEW_BACKUP = re.compile(r"cortex00_\d{8}T\d{6}")

needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is installed by "
                                   "make test's set-up (.ci/sysdeps.sh)")

Unit = dict[str, dict[str, list[str]]]


# -- systemd's syntax, as far as these units use it ---------------------------------------

def read_unit(path: Path) -> Unit:
    """Sections and settings in order (an empty assignment resets a list);
    comments; a line ending in a backslash continues, the backslash becoming a
    blank, and comment lines inside a continuation are skipped."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    pending: str | None = None
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped[:1] in ("#", ";") or (pending is None and not stripped):
            continue
        line = raw if pending is None else pending + raw
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending, line = None, line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and section is not None, f"{path}: not a setting: {line!r}"
        values = section.setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
    return unit


def last(section: dict[str, list[str]], key: str) -> str:
    assert section.get(key), f"{key}= is not set"
    return section[key][-1]


def specifiers(text: str, instance: str) -> str:
    """%i is the instance and %% a percent sign.  Any other specifier would be
    expanded by systemd too (%Y is the unit file's directory, %m the machine
    ID, %H the host name): refused, so a strftime field must be written %%Y."""
    def one(m: re.Match[str]) -> str:
        if m.group(1) == "%":
            return "%"
        assert m.group(1) == "i", f"specifier %{m.group(1)} in {text!r}: write %% for %"
        return instance
    return re.sub(r"%(.)", one, text, flags=re.S)


def systemd_expand(word: str, env: dict[str, str]) -> str:
    """What systemd does to one ExecStart word before running it: $$ becomes $
    and ${NAME} the variable's value; any other $ stays for the shell.  (A word
    that is exactly $NAME would be split at blanks; the unit has none.)"""
    assert not re.fullmatch(r"\$\w+", word), word
    return re.sub(r"\$\$|\$\{(\w+)\}",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), ""), word)


def exec_argv(unit: Unit, instance: str, env: dict[str, str]) -> list[str]:
    (value,) = unit["Service"]["ExecStart"]
    value = specifiers(value, instance)
    # No prefix (-, +, @ ...), and no backslash: systemd's quoting is then the shell's.
    assert value.startswith("/") and "\\" not in value, value
    return [systemd_expand(word, env) for word in shlex.split(value)]


def read_env_file(path: Path) -> dict[str, str]:
    """EnvironmentFile= syntax as the example uses it: NAME=value lines, comments
    and blank lines; values literal (the example quotes and escapes nothing)."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_]\w*", key.strip()), line
        assert not re.search(r"[\"'\\]", value), f"quotes and escapes are not parsed here: {line}"
        env[key.strip()] = value.strip()
    return env


def service_environment(unit: Unit, instance: str, file_env: dict[str, str]) -> dict[str, str]:
    """The ExecStart process's environment: systemd's PATH, the unit's
    Environment= defaults, then the environment file, which wins."""
    env = {"PATH": SERVICE_PATH, "LANG": "C.UTF-8"}
    for value in unit["Service"].get("Environment", []):
        for assignment in shlex.split(specifiers(value, instance)):
            key, _, val = assignment.partition("=")
            env[key] = val
    return env | file_env


def unit_script() -> str:
    argv = exec_argv(read_unit(SERVICE), INSTANCE, {})
    assert argv[:2] == ["/bin/sh", "-c"] and len(argv) == 3, argv
    return argv[2]


# -- the shell scripts: which synfast commands they run, with which options ---------------

def invocations(script: str) -> list[tuple[str, list[str]]]:
    """The synfast commands of a shell script in order: (subcommand, the words
    up to the end of that command, quotes removed)."""
    found = []
    for line in script.splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lex.whitespace_split = True
        words, start = list(lex), True
        for i, word in enumerate(words):
            if start and word in ("synfast", "$SYNFAST"):
                rest = words[i + 2:]
                end = next((j for j, w in enumerate(rest) if w in (";", "||", "&&", "|")),
                           len(rest))
                found.append((words[i + 1], rest[:end]))
            start = word in (";", "||", "&&", "|")
    return found


def options(words: list[str]) -> list[str]:
    return [m for w in words for m in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", w)]


@cache
def help_options(sub: str) -> frozenset[str]:
    proc = run_cli(sub, "--help", env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, f"synfast {sub}: {proc.stderr}"
    return frozenset(re.findall(r"--[a-z][a-z0-9-]*", proc.stdout))


OPTS_VARIABLES = {"BACKUP_OPTS": "backup", "PRUNE_OPTS": "prune", "VERIFY_OPTS": "verify"}


def cronjobs() -> list[dict]:
    return [doc for doc in yaml.safe_load_all(CRONJOB.read_text()) if doc]


def pod_of(doc: dict) -> dict:
    return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def container_env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def used_options(source: str) -> list[tuple[str, str]]:
    """(subcommand, option) for every option a file passes to synfast."""
    calls: list[tuple[str, list[str]]] = []
    if source == "unit":
        calls += invocations(unit_script())
        env = service_environment(read_unit(SERVICE), INSTANCE, {})
        calls += [(OPTS_VARIABLES[k], v.split()) for k, v in env.items() if k in OPTS_VARIABLES]
    elif source == "example.env":          # the commented examples too
        for m in re.finditer(r"^#?(\w+_OPTS)=(.*)$", EXAMPLE_ENV.read_text(), re.M):
            calls.append((OPTS_VARIABLES[m.group(1)], m.group(2).split()))
    elif source == "cronjob":
        for doc in cronjobs():
            for container in pod_of(doc)["containers"]:
                calls += invocations("\n".join(container["args"]))
                calls += [(OPTS_VARIABLES[k], v.split())
                          for k, v in container_env(container).items() if k in OPTS_VARIABLES]
    else:                                   # the commands shown in docs/usage/fleet.md
        text = re.sub(r"\\\n", " ", FLEET_DOC.read_text())
        for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M):
            lines = [ln.split(" #")[0] for ln in block.splitlines()]
            calls += invocations("\n".join(ln for ln in lines if ln.startswith("synfast ")))
    assert calls, source
    return [(sub, opt) for sub, words in calls for opt in options(words)]


# -- systemd units -------------------------------------------------------------------------

@pytest.fixture
def units(tmp_path: Path) -> Path:
    """The units as installed, with the example drop-in for the instance."""
    d = tmp_path / "units"
    (d / f"synfast-backup@{INSTANCE}.service.d").mkdir(parents=True)
    shutil.copy(SERVICE, d)
    shutil.copy(TIMER, d)
    shutil.copy(OVERRIDE, d / f"synfast-backup@{INSTANCE}.service.d" / "override.conf")
    return d


def analyze_verify(units: Path, *names: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, "verify", "--man=no", *names], capture_output=True,
                          text=True, env={**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"})


def timer_target(timer: Path) -> str:
    return specifiers(last(read_unit(timer)["Timer"], "Unit"), INSTANCE)


@needs_analyze
def test_units_pass_systemd_analyze_verify(units: Path) -> None:
    # verify does not follow a timer's Unit=: the unit it names is verified
    # too, by that name, so a timer pointing nowhere fails here.
    proc = analyze_verify(units, f"synfast-backup@{INSTANCE}.timer", timer_target(TIMER),
                          "synfast-backup@cortex01.service")   # an instance without drop-in
    # Unknown keys and bad values are only warnings for verify: nothing may be printed.
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")
    assert timer_target(TIMER) == f"synfast-backup@{INSTANCE}.service"


@needs_analyze
def test_verify_catches_a_broken_timer_link_and_a_bad_setting(units: Path) -> None:
    timer = units / "synfast-backup@.timer"
    timer.write_text(TIMER.read_text().replace("Unit=synfast-backup@", "Unit=synfast-nothing@"))
    proc = analyze_verify(units, f"synfast-backup@{INSTANCE}.timer", timer_target(timer))
    assert proc.returncode != 0 and "not found" in proc.stdout + proc.stderr
    dropin = units / f"synfast-backup@{INSTANCE}.service.d" / "override.conf"
    dropin.write_text(dropin.read_text() + "ProtectSystem=strictly\n")
    proc = analyze_verify(units, f"synfast-backup@{INSTANCE}.service")
    assert "override.conf" in proc.stderr and "strictly" in proc.stderr


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="systemctl is not installed")
def test_enable_links_the_timer_instance(tmp_path: Path) -> None:
    etc = tmp_path / "etc" / "systemd" / "system"
    etc.mkdir(parents=True)
    shutil.copy(SERVICE, etc)
    shutil.copy(TIMER, etc)
    proc = subprocess.run(["systemctl", f"--root={tmp_path}", "enable",
                           f"synfast-backup@{INSTANCE}.timer"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    link = etc / "timers.target.wants" / f"synfast-backup@{INSTANCE}.timer"
    assert os.readlink(link) == "/etc/systemd/system/synfast-backup@.timer"


def test_timer_settings() -> None:
    timer = read_unit(TIMER)
    t = timer["Timer"]
    assert last(t, "Persistent") == "true"
    delay = re.fullmatch(r"(\d+)\s*(s|min|h)", last(t, "RandomizedDelaySec"))
    assert delay and int(delay.group(1)) * {"s": 1, "min": 60, "h": 3600}[delay.group(2)] >= 600
    assert t.get("OnCalendar")
    assert timer["Install"]["WantedBy"] == ["timers.target"]


def test_service_settings() -> None:
    unit = read_unit(SERVICE)
    s = unit["Service"]
    assert last(s, "Type") == "oneshot"
    assert s["EnvironmentFile"] == ["/etc/synfast/%i.env"]
    assert int(last(s, "Nice")) > 0
    assert last(s, "IOSchedulingClass") == "idle"
    assert int(last(s, "LimitNOFILE").split(":")[-1]) >= 65536
    assert last(s, "ProtectSystem") == "strict"
    assert last(s, "ProtectHome") in ("yes", "read-only", "tmpfs")
    assert last(s, "PrivateTmp") == last(s, "NoNewPrivileges") == "yes"
    assert "User" not in s      # per instance, in the documented drop-in
    writable = [p for v in s["ReadWritePaths"] for p in v.split()]
    env = service_environment(unit, INSTANCE, {})
    # The lock directory must exist (no "-": a missing one fails the start
    # instead of every lock), and tmpfiles creates exactly it, writable by all.
    assert env["SYNFAST_LOCK_DIR"] in writable
    (line,) = [ln for ln in TMPFILES.read_text().splitlines() if ln and ln[0] != "#"]
    assert line.split()[:3] == ["d", env["SYNFAST_LOCK_DIR"], "1777"]
    assert "-" + env["METRICS_DIR"] in writable
    assert any(env["DEST_ROOT"].startswith(p.lstrip("-") + "/") for p in writable)
    # The example drop-in lets the example's source be written (its lock files).
    dropin = read_unit(OVERRIDE)["Service"]
    assert last(dropin, "User")
    assert read_env_file(EXAMPLE_ENV)["SRC"] in dropin["ReadWritePaths"]


def test_service_runs_backup_then_prune_then_verify_of_that_backup() -> None:
    calls = invocations(unit_script())
    assert [sub for sub, _ in calls] == ["backup", "prune", "verify"]
    (_, backup), (_, prune), (_, verify) = calls
    assert backup[:2] == ["$SRC", "$dst"] and prune[0] == "$DEST_ROOT" and verify[0] == "$dst"
    for sub, words in calls:
        assert f"--metrics-file=$METRICS_DIR/synfast-{INSTANCE}-{sub}.prom" in " ".join(words)
    assert 'name=$(date +"$DEST_NAME")' in unit_script()


def test_example_env_and_unit_agree_on_variables() -> None:
    read = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", unit_script()))
    defaults = set(service_environment(read_unit(SERVICE), INSTANCE, {})) - {"PATH", "LANG"}
    example = set(re.findall(r"^#?([A-Z][A-Z0-9_]*)=", EXAMPLE_ENV.read_text(), re.M))
    assert read <= defaults | example, "a variable without default or example line"
    assert "SRC" in example and "SRC" not in defaults
    assert example <= read, "an example line that nothing reads"


@pytest.mark.parametrize("source", ["unit", "example.env", "cronjob", "fleet.md"])
def test_options_exist(source: str) -> None:
    unknown = {(sub, opt) for sub, opt in used_options(source) if opt not in help_options(sub)}
    assert not unknown, f"not in synfast SUB --help: {sorted(unknown)}"


# -- the service's sequence, run -----------------------------------------------------------

@pytest.fixture
def fleet(tmp_path: Path) -> dict[str, Path]:
    """A service directory and a backup root holding two older backups of one
    day (prune keeps the later one) and a file that is not a backup."""
    root = tmp_path / "backups"
    root.mkdir()
    fake_backup(root, "cortex00_20010101T010000", "2001-01-01 01:00")
    fake_backup(root, "cortex00_20010101T020000", "2001-01-01 02:00")
    (root / "notes.txt").write_text("not a backup")
    (tmp_path / "textfile").mkdir()
    return {"src": service(tmp_path), "root": root, "metrics": tmp_path / "textfile",
            "locks": tmp_path / "locks"}


def run_unit(fleet: dict[str, Path], **overrides: str) -> subprocess.CompletedProcess[str]:
    """The ExecStart of synfast-backup@cortex00.service as systemd would run it,
    with the example environment file pointed at the test's paths."""
    file_env = read_env_file(EXAMPLE_ENV) | {
        "SRC": str(fleet["src"]), "DEST_ROOT": str(fleet["root"]),
        "METRICS_DIR": str(fleet["metrics"]), "SYNFAST": str(SYNFAST_BIN),
        "SYNFAST_LOCK_DIR": str(fleet["locks"])} | overrides
    unit = read_unit(SERVICE)
    env = service_environment(unit, INSTANCE, file_env)
    return subprocess.run(exec_argv(unit, INSTANCE, env), env=env, cwd="/", capture_output=True,
                          text=True, timeout=600)


def listing(root: Path) -> dict[str, dict]:
    proc = run_cli("list", root, "--json")
    assert proc.returncode == 0, proc.stderr
    return {b["name"]: b for b in json.loads(proc.stdout)}


@pytest.mark.parametrize("metrics", [True, False], ids=["metrics", "no-metrics"])
def test_service_sequence_makes_a_verified_backup_and_prunes(fleet: dict[str, Path],
                                                             metrics: bool) -> None:
    proc = run_unit(fleet, **({} if metrics else {"METRICS_DIR": ""}))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = set(os.listdir(fleet["root"]))
    new = {n for n in names if NEW_BACKUP.fullmatch(n) and not n.startswith("cortex00_2001")}
    assert len(new) == 1, names
    # prune ran with the example's retention: of one day only the later is kept
    assert names == new | {"cortex00_20010101T020000", "notes.txt"}
    (verified,) = [b["verified"] for n, b in listing(fleet["root"]).items() if n in new]
    assert verified and verified["ok"] is True
    if not metrics:
        assert os.listdir(fleet["metrics"]) == []
        return
    from prometheus_client.parser import text_string_to_metric_families

    files = {f"synfast-{INSTANCE}-{kind}.prom": kind for kind in ("backup", "prune", "verify")}
    assert set(os.listdir(fleet["metrics"])) == set(files)      # no temporary left behind
    for name, kind in files.items():
        families = list(text_string_to_metric_families((fleet["metrics"] / name).read_text()))
        assert families and all(f.name.startswith(f"synfast_{kind}_") for f in families)
        for sample in (s for f in families for s in f.samples):
            assert "root" in sample.labels, (name, sample)
            assert kind != "backup" or sample.labels["source"].endswith(INSTANCE), sample


def test_a_failed_backup_ends_the_run_with_its_code(fleet: dict[str, Path]) -> None:
    missing = fleet["src"].parent / "gone"
    proc = run_unit(fleet, SRC=str(missing), METRICS_DIR="")
    direct = run_cli("backup", missing, fleet["root"] / "x")
    assert proc.returncode == direct.returncode == 1
    assert str(missing) in proc.stderr
    # neither prune nor verify ran
    assert set(os.listdir(fleet["root"])) == {"cortex00_20010101T010000",
                                              "cortex00_20010101T020000", "notes.txt"}
    assert proc.stdout == ""


def test_an_unset_source_is_named() -> None:
    file_env = {k: v for k, v in read_env_file(EXAMPLE_ENV).items() if k != "SRC"}
    unit = read_unit(SERVICE)
    env = service_environment(unit, INSTANCE, file_env)
    proc = subprocess.run(exec_argv(unit, INSTANCE, env), env=env, capture_output=True,
                          text=True)
    assert proc.returncode != 0
    assert "SRC" in proc.stderr and f"/etc/synfast/{INSTANCE}.env" in proc.stderr


def test_staleness_check_from_the_docs(tmp_path: Path) -> None:
    """synfast list ROOT --max-age 26h [--verified], the alert docs/usage/fleet.md
    recommends: exit 1 while the newest backup is old or unverified."""
    root = tmp_path / "backups"
    root.mkdir()
    fake_backup(root, "cortex00_20010101T010000", "2001-01-01 01:00")
    stale = run_cli("list", root, "--max-age", "26h")
    assert stale.returncode == 1 and (stale.stdout + stale.stderr).strip()
    src = tmp_path / "svc"
    src.mkdir()
    make_env(src / "cell.lmdb", {None: {b"k": b"v"}}, map_size=1 << 20)
    backup_ok(src, root / "cortex00_new")
    assert run_cli("list", root, "--max-age", "26h").returncode == 0
    assert run_cli("list", root, "--max-age", "26h", "--verified").returncode == 1
    assert run_cli("verify", root / "cortex00_new").returncode == 0
    assert run_cli("list", root, "--max-age", "26h", "--verified").returncode == 0


# -- Kubernetes ----------------------------------------------------------------------------

def data_mounts(pod: dict, container: dict) -> tuple[dict, list[dict]]:
    """The service volume's read-only mount at $SRC, and its lock file mounts."""
    src = container_env(container)["SRC"]
    (main,) = [m for m in container["volumeMounts"] if m["mountPath"] == src]
    rest = [m for m in container["volumeMounts"] if m["name"] == main["name"] and m is not main]
    return main, rest


def test_cronjob_structure() -> None:
    docs = cronjobs()
    assert len(docs) == 2
    for doc in docs:
        assert (doc["apiVersion"], doc["kind"]) == ("batch/v1", "CronJob")
        spec = doc["spec"]
        assert spec["concurrencyPolicy"] == "Forbid"
        assert isinstance(deadline := spec["startingDeadlineSeconds"], int) and deadline > 0
        assert len(spec["schedule"].split()) == 5
        pod = pod_of(doc)
        assert pod["restartPolicy"] == "Never" and pod["terminationGracePeriodSeconds"] >= 60
        security = pod["securityContext"]
        assert security["runAsUser"] > 0 and security["runAsNonRoot"] is True
        assert "fsGroup" not in security    # it would re-own the service's files
        (term,) = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        (container,) = pod["containers"]
        for rule in doc["spec"]["jobTemplate"]["spec"].get("podFailurePolicy", {}).get("rules", []):
            assert rule["onExitCodes"]["containerName"] == container["name"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert {m["name"] for m in mounts.values()} <= set(volumes)
        for scratch in ("/tmp", "/run/lock"):
            assert "emptyDir" in volumes[mounts[scratch]["name"]]
        main, locks = data_mounts(pod, container)
        assert main["readOnly"] is True and "subPath" not in main
        claim = volumes[main["name"]]["persistentVolumeClaim"]
        assert not claim.get("readOnly")    # would make the lock files read-only too
        assert locks
        for m in locks:
            assert re.search(r"(^|/)lock\.mdb$|-lock$", m["subPath"]), m
            assert m["mountPath"] == f"{main['mountPath']}/{m['subPath']}"
            assert not m.get("readOnly")
        script = "\n".join(container["args"])
        assert container["command"] == ["/bin/sh", "-c"]
        subs = [sub for sub, _ in invocations(script)]
        assert subs in (["backup", "prune", "verify"], ["backup", "verify"])
    (plain, borg) = (pod_of(d)["containers"][0] for d in docs)
    assert [w[:2] for _, w in invocations(plain["args"][0])][0] == ["$SRC", "$dst"]
    assert invocations(borg["args"][0])[0][1][1] == "borg:$BORG_REPO::$archive"
    (passphrase,) = [e for e in borg["env"] if e["name"] == "BORG_PASSPHRASE"]
    assert passphrase["valueFrom"]["secretKeyRef"]["key"]


def k8s_expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' expansion of command and args: $(NAME) is a defined
    variable's value (else left as written), $$ is $, any other $ stays."""
    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return re.sub(r"\$\$|\$\(([^)]*)\)", one, text)


#: The service: has an environment open (and so holds its lock) until stdin closes.
HOLDER = ("import lmdb, sys\nenv = lmdb.open(sys.argv[1])\nprint('ready', flush=True)\n"
          "sys.stdin.read()\n")


def run_container(tmp_path: Path,
                  lock_mounts: bool) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The first CronJob's container script, with its volumes as directories and
    its mounts made, in a private mount namespace, by bind mounts under
    tmp_path/mnt; a process holds the first environment open meanwhile.
    Returns the run and the backup volume."""
    if (not IS_ROOT or shutil.which("unshare") is None
            or subprocess.run(["unshare", "--mount", "true"]).returncode != 0):
        pytest.skip("bind mounts in a private mount namespace need root")
    pod = pod_of(cronjobs()[0])
    (container,) = pod["containers"]
    main, locks = data_mounts(pod, container)
    vols, mnt = tmp_path / "vol", tmp_path / "mnt"
    mnt.mkdir()
    for v in pod["volumes"]:
        (vols / v["name"]).mkdir(parents=True)
    data = vols / main["name"]
    for m in locks:
        (data / m["subPath"]).parent.parent.mkdir(parents=True, exist_ok=True)
        make_env(data / Path(m["subPath"]).parent, {b"nodes": {b"n%03d" % i: os.urandom(300)
                                                              for i in range(50)}},
                 map_size=1 << 24)
    (data / "cell.yaml").write_text("nexslog:en: true\n")
    mounts = [m for m in container["volumeMounts"] if lock_mounts or m not in locks]
    script = []
    for m in sorted(mounts, key=lambda m: m["mountPath"].count("/")):
        source, target = vols / m["name"] / m.get("subPath", ""), f"{mnt}{m['mountPath']}"
        if source.is_dir():
            script.append(f"mkdir -p {shlex.quote(target)}")
        script.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(target)}")
        if m.get("readOnly"):
            script.append(f"mount -o remount,bind,ro {shlex.quote(target)}")
    env = {k: f"{mnt}{v}" if v.startswith("/") else v for k, v in container_env(container).items()}
    env |= {"PATH": f"{SYNFAST_BIN.parent}:/usr/bin:/bin", "TMPDIR": f"{mnt}/tmp",
            "SYNFAST_LOCK_DIR": f"{mnt}/run/lock/synfast"}
    argv = [k8s_expand(a, env) for a in container["command"] + container["args"]]
    before = snapshot(data)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER,
                               str(data / Path(locks[0]["subPath"]).parent)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "/bin/sh", "-ec",
                               "\n".join(script) + '\nexec "$@"', "mounts", *argv], env=env,
                              cwd=mnt, capture_output=True, text=True, timeout=600)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)
    assert snapshot(data) == before       # the service volume: only lock files written
    return proc, vols / "backups"


def snapshot(tree: Path) -> dict[str, tuple[int, int]]:
    """Everything under tree but LMDB's lock files: size and mtime."""
    out = {}
    for dirpath, _dirs, files in os.walk(tree):
        for name in files:
            if name != "lock.mdb":
                st = os.stat(os.path.join(dirpath, name))
                out[os.path.relpath(os.path.join(dirpath, name), tree)] = (st.st_size,
                                                                            st.st_mtime_ns)
    return out


def test_cronjob_backs_up_a_live_service_through_its_mounts(tmp_path: Path) -> None:
    proc, backups = run_container(tmp_path, lock_mounts=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (name,) = os.listdir(backups)
    assert NEW_BACKUP.fullmatch(name)
    assert listing(backups)[name]["verified"]["ok"] is True


def test_cronjob_without_lock_mounts_is_refused(tmp_path: Path) -> None:
    """The same, the lock files left read-only: LMDB would read without
    registering, and synfast refuses the environment the service has open."""
    proc, backups = run_container(tmp_path, lock_mounts=False)
    assert proc.returncode == 1
    assert "read-only" in proc.stderr and "lock.mdb" in proc.stderr
    assert os.listdir(backups) == []
