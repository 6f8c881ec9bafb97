"""`peakknn serve` as a command: lazy dependencies, the install hint, the loopback rule, option
checks, the key from the environment, `python -m peakknn.server`."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
from serve_helpers import free_port

from peakknn.cli import main
from peakknn.server.run import is_loopback


def test_importing_peakknn_loads_no_server_dependency():
    code = ("import sys, peakknn, peakknn.server, peakknn.server.settings; from peakknn.cli import _parser; _parser(); "
            "print([m for m in ('fastapi', 'uvicorn', 'starlette', 'prometheus_client') if m in sys.modules])")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_dependencies_name_the_extra(tmp_path):
    code = ("import sys; sys.modules['fastapi'] = None; from peakknn.cli import main; "
            f"sys.exit(main(['serve', '--data', {str(tmp_path / 'd')!r}]))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert out.returncode == 2 and "pip install 'peakknn[server]'" in out.stderr and "fastapi" in out.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost"])
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "example.org", "192.168.0.1"])
def test_other_hosts_need_a_key(host, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PEAKKNN_API_KEY", raising=False)
    assert not is_loopback(host)
    assert main(["serve", "--data", str(tmp_path / "d"), "--host", host]) == 2
    assert "set an API key" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before anything was opened


@pytest.mark.parametrize("option, value", [("--max-batch", "0"), ("--max-queue", "-1"), ("--max-delay-ms", "x"), ("--max-body-mb", "0"),
                                           ("--snapshot-every", "0"), ("--snapshot-seconds", "0"), ("--port", "70000"), ("--log-level", "loud")])  # fmt: skip
def test_bad_options_are_usage_errors(option, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", "--data", str(tmp_path), option, value])
    assert e.value.code == 2 and option in capsys.readouterr().err


def test_data_is_required(capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve"])
    assert e.value.code == 2 and "--data" in capsys.readouterr().err


def test_module_entry_point_and_key_from_the_environment(tmp_path):
    port = free_port()
    env = {**os.environ, "PEAKKNN_API_KEY": "env-key"}
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "peakknn.server", "--data", str(tmp_path / "d"), "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(1200):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            time.sleep(0.1)
        assert httpx.get(url + "/collections").status_code == 401
        assert httpx.get(url + "/collections", headers={"api-key": "env-key"}).status_code == 200
        proc.terminate()
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
