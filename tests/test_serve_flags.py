"""Every numeric flag and environment setting of ``gencli serve`` is validated before the
server binds: a bad value (not a number, out of range, inf, nan) is one line naming the flag
or variable, and exit code 2. The help text states each default and variable."""

from __future__ import annotations

import subprocess

import pytest

from gencli.server.config import NUMBERS, ServeConfig, SettingError
from tests.conftest import GENCLI, clean_env


def serve(tmp_path, *args, env=None, timeout=30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [GENCLI, "serve", "--port", "0", *args],
        env=clean_env(tmp_path, **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def one_line_exit_2(r: subprocess.CompletedProcess, *needles: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr and "listening" not in r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("spec", [n for n in NUMBERS if n.key != "port"], ids=lambda n: n.flag)
def test_a_bad_flag_value_is_one_line_and_exit_2(tmp_path, spec):
    for bad in ("inf", "nan", "-1e9", "abc"):
        r = serve(tmp_path, spec.flag, bad)
        one_line_exit_2(r, spec.flag, repr(bad))


@pytest.mark.parametrize("spec", [n for n in NUMBERS if n.env], ids=lambda n: n.env)
def test_a_bad_environment_value_is_one_line_and_exit_2(tmp_path, spec):
    r = serve(tmp_path, env={spec.env: "Infinity"})
    one_line_exit_2(r, spec.env, "'Infinity'", "fix or unset it")


def test_the_reported_crash_and_ranges(tmp_path):
    one_line_exit_2(serve(tmp_path, "--max-body-mb", "inf"), "--max-body-mb 'inf' is not a number from 0.001")
    one_line_exit_2(serve(tmp_path, "--port", "70000"), "--port", "0 to 65535")
    one_line_exit_2(serve(tmp_path, "--workers", "0"), "--workers", "whole number from 1")
    one_line_exit_2(serve(tmp_path, "--workers", "1.5"), "--workers")
    one_line_exit_2(serve(tmp_path, "--timeout", "0"), "--timeout", "above 0")
    one_line_exit_2(serve(tmp_path, env={"GENCLI_ALLOW_PRIVATE_IMAGES": "maybe"}), "GENCLI_ALLOW_PRIVATE_IMAGES")
    one_line_exit_2(serve(tmp_path, env={"GENCLI_ACCESS_LOG": "loud"}), "GENCLI_ACCESS_LOG")


def test_flags_win_over_the_environment_and_limits_are_read_once():
    cfg = ServeConfig.load(
        {"max_body_mb": "2", "keep_alive": None, "max_images": "0"},
        {
            "GENCLI_MAX_BODY_MB": "8",
            "GENCLI_KEEP_ALIVE": "5",
            "GENCLI_MAX_HEADERS": "7",
            "GENCLI_ALLOWED_HOSTS": "a.lan, b.lan",
            "GENCLI_API_KEY": "  ",
        },
    )
    assert cfg.max_body == 2 * 1024 * 1024 and cfg.keep_alive == 5.0 and cfg.max_headers == 7
    assert cfg.max_images == 0 and cfg.allowed_hosts == ["a.lan", "b.lan"] and cfg.api_key is None
    limits = cfg.limits()
    assert limits.max_headers == 7 and limits.keep_alive == 5.0
    with pytest.raises(SettingError, match="GENCLI_MAX_HEADERS='nan'"):
        ServeConfig.load({}, {"GENCLI_MAX_HEADERS": "nan"})


def test_help_states_every_setting_with_its_default_and_variable(tmp_path):
    r = subprocess.run(
        [GENCLI, "serve", "--help"], env=clean_env(tmp_path, COLUMNS="300"), capture_output=True, text=True, timeout=30
    )  # wide: each option's help on one line
    text = " ".join(r.stdout.split())
    for spec in NUMBERS:
        assert spec.flag in text
        default = str(int(spec.default)) if float(spec.default).is_integer() else str(spec.default)
        if spec.env:
            assert f"default {default}; also ${spec.env}" in text, spec.flag
    for flag in ("--allowed-hosts", "--insecure-no-auth", "--allow-private-images", "--allowed-origins"):
        assert flag in text


def test_one_table_gives_the_flags_the_config_and_the_http_limits():
    """gencli.config.servesettings.SERVE is the one declaration: each row's flag is an option of the
    serve command, its value (flag or variable) lands in its ServeConfig field (scaled to bytes
    for MB and KB), and ServeConfig's and http11.Limits' defaults are the rows' defaults."""
    import dataclasses

    from gencli.cli.app import SERVE_SETTINGS
    from gencli.config.servesettings import SERVE
    from gencli.server.http11 import Limits

    assert NUMBERS == tuple(row.number for row in SERVE)
    declared = {key for key, _, _ in SERVE_SETTINGS}
    cfg = ServeConfig()
    for row in SERVE:
        n = row.number
        assert n.key in declared or n.key in ("port", "workers")
        if row.field not in ("timeout", "retries"):  # None there: the engine's own default
            assert getattr(cfg, row.field) == row.field_value(n.default), row.field
        value = n.default * 2 if n.default * 2 <= n.hi else n.lo
        text = str(int(value)) if n.integer else str(value)
        by_flag = ServeConfig.load({n.key: text}, {})
        assert getattr(by_flag, row.field) == row.field_value(value), row.field
        if n.env:
            assert getattr(ServeConfig.load({}, {n.env: text}), row.field) == row.field_value(value)
    assert ServeConfig().limits() == Limits()
    for f in dataclasses.fields(Limits):
        assert getattr(Limits(), f.name) == getattr(cfg, f.name)
    assert ServeConfig.load({"max_header_kb": "3"}, {}).limits().max_header_bytes == 3 * 1024
