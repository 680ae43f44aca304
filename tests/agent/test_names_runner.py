"""Name validation and the command runner."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent import names
from agent.errors import AgentError
from agent.runner import SubprocessRunner


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (names.lv, "x; rm -rf /"),
        (names.lv, "-n"),
        (names.lv, "snapshot1"),
        (names.vg, ".."),
        (names.vg, "a b"),
        (names.guest, "g$(reboot)"),
        (names.guest, ""),
        (names.device, "/dev/../etc/passwd"),
        (names.device, "/etc/passwd"),
        (names.mount_point, "/"),
        (names.mount_point, "relative/path"),
        (names.mount_point, "/mnt/a b"),
        (names.cluster, "c" * 33),
        (names.fence_agent, "/bin/sh"),
        (names.fence_agent, "fence_x;id"),
        (names.mount_options, "rw;reboot"),
        (names.libvirt_uri, "qemu+tcp://host/system; rm"),
        (names.libvirt_uri, "qemu+ext:///system?command=/tmp/evil"),
        (names.libvirt_uri, "qemu+unix:///system?socket=/tmp/s"),
        (names.libvirt_uri, "qemu+tcp://h/system?keyfile=/root/.ssh/id"),
        (names.libvirt_uri, "xen:///system"),
        (names.libvirt_uri, "qemu+tcp://a b/system"),
        (names.migration_uri, "tcp://h:1?x"),
        (names.ip_address, 'fe80::1%x"\nauth_tcp = "none'),
        (names.ip_address, "fe80::1%eth0"),
        (names.address, "fe80::1%eth0"),
        (names.address, "10.0.0.1/24"),
        (names.host_name, "h;reboot"),
        (names.fence_key, "IP"),
        (names.fence_key, "a.b"),
        (names.fence_key, "ip\x00"),
        (names.fence_parameter, "action"),
        (names.fence_parameter, "option"),
        (names.fence_parameter, "plug"),
        (names.fence_plug, "3\raction=off"),
        (names.fence_plug, "a=b"),
        (names.config_value, '"10.0.0.1"\nauth_tcp = "none"'),
        (names.config_value, '"a"b"'),
        (names.config_value, "none"),
    ],
)
def test_bad_names_are_refused(check: object, value: str) -> None:
    with pytest.raises(AgentError) as err:
        check(value)  # type: ignore[operator]
    assert err.value.code == "invalid_name"


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (names.lv, "lv_data-1"),
        (names.vg, "vg.cluster+1"),
        (names.guest, "web-01.example"),
        (names.device, "/dev/mapper/vg-lv"),
        (names.mount_point, "/mnt/gfs2/data"),
        (names.libvirt_uri, "qemu+tcp://10.88.0.2/system"),
        (names.libvirt_uri, "test:///default"),
        (names.libvirt_uri, "qemu:///system"),
        (names.libvirt_uri, "qemu+tls://et-virt05.example:16514/system"),
        (names.libvirt_uri, "qemu+ssh://root@[fe80::1]/system"),
        (names.migration_uri, "tcp://10.88.0.6:49152"),
        (names.address, "fe80::1"),
        (names.address, "et-virt05"),
        (names.fence_parameter, "hexadecimal_kg"),
        (names.fence_key, "plug"),
        (names.fence_plug, "VM 3"),
        (names.config_value, '"10.88.0.5"'),
        (names.config_value, "49152"),
    ],
)
def test_good_names_pass(check: object, value: str) -> None:
    assert check(value) == value  # type: ignore[operator]


CHECKS = [
    (names.guest, "g1"),
    (names.vg, "vg0"),
    (names.lv, "lv0"),
    (names.device, "/dev/sdb"),
    (names.mount_point, "/mnt/vms"),
    (names.cluster, "lab"),
    (names.fs_name, "vms"),
    (names.fstype, "gfs2"),
    (names.mount_options, "defaults"),
    (names.host_name, "et-virt05"),
    (names.fence_agent, "fence_ipmilan"),
    (names.fence_key, "ip"),
    (names.libvirt_uri, "qemu:///system"),
    (names.ip_address, "10.88.0.5"),
    (names.config_value, "1"),
]


@pytest.mark.parametrize(("check", "good"), CHECKS, ids=lambda c: getattr(c, "__name__", c))
def test_whole_value_must_match(check: object, good: str) -> None:
    assert check(good) == good  # type: ignore[operator]
    for bad in (good + "\n", good + "\r", good + "\x00", " " + good):
        with pytest.raises(AgentError):
            check(bad)  # type: ignore[operator]


def test_secret_parameters() -> None:
    for name in ("password", "passwd", "passwd_script", "password_script", "hexadecimal_kg"):
        assert names.is_secret(name), name
    for name in ("ip", "ipport", "lanplus", "username", "privlvl", "plug"):
        assert not names.is_secret(name), name


def test_libvirt_config_never_gets_a_second_setting(tmp_path: Path) -> None:
    from agent import hvconfig

    bad = hvconfig.MigrationSettings('fe80::1%x"\nauth_tcp = "none', "10.88.0.5")
    with pytest.raises(AgentError):
        hvconfig.apply(tmp_path, bad)
    with pytest.raises(AgentError):
        hvconfig.render("", {"listen_addr": '"10.0.0.1"\nauth_tcp = "none"'})
    assert not (tmp_path / "libvirtd.conf").exists()
    good = hvconfig.render("", {"listen_addr": '"10.88.0.5"', "listen_tcp": "1"})
    assert 'listen_addr = "10.88.0.5"' in good


def test_runner_captures_output() -> None:
    done = SubprocessRunner().run(["sh", "-c", "echo out; echo err >&2"])
    assert (done.returncode, done.stdout, done.stderr) == (0, "out\n", "err\n")


def test_runner_never_uses_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    done = SubprocessRunner().run(["echo", f"x; touch {marker}"])
    assert done.stdout == f"x; touch {marker}\n"
    assert not marker.exists()


def test_runner_error_carries_command_and_stderr() -> None:
    with pytest.raises(AgentError) as err:
        SubprocessRunner().run(["sh", "-c", "echo broken >&2; exit 3"])
    assert err.value.code == "command_failed"
    assert err.value.command == ["sh", "-c", "echo broken >&2; exit 3"]
    assert err.value.stderr == "broken\n"
    assert err.value.exit_code == 3


def test_runner_timeout_kills() -> None:
    start = time.monotonic()
    with pytest.raises(AgentError) as err:
        SubprocessRunner().run(["sleep", "10"], timeout_s=0.3)
    assert err.value.code == "timeout"
    assert time.monotonic() - start < 3


def test_runner_missing_program() -> None:
    with pytest.raises(AgentError) as err:
        SubprocessRunner().run(["/nonexistent/prog"])
    assert err.value.code == "not_found"


def test_runner_stdin_is_not_in_errors() -> None:
    with pytest.raises(AgentError) as err:
        SubprocessRunner().run(
            ["sh", "-c", "cat >/dev/null; exit 1"], input_text="password=s3cr3t\n"
        )
    assert "s3cr3t" not in repr(vars(err.value))
