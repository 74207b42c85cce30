"""Security: CURVE encryption, the shared token, owner-only sockets, tenant isolation."""
import os
import socket
import stat
import subprocess
import sys

import pytest

from client_lib import Client, ConnectError, KernelSpec


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_keys_command_writes_owner_only_secret(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gpusched.cli", "keys", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    secret, public = tmp_path / "daemon.key_secret", tmp_path / "daemon.key"
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert len(public.read_bytes().strip()) == 40
    again = subprocess.run([sys.executable, "-m", "gpusched.cli", "keys", "--out", str(tmp_path)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "--force" in again.stderr  # no silent overwrite


def test_curve_and_token_on_tcp(daemon_factory, tmp_path):
    from scheduler_daemon.transport.keys import make_keys
    secret, public = make_keys(str(tmp_path))
    ep = f"tcp://127.0.0.1:{_port()}"
    daemon_factory("--backend", "sim", "--curve-secret", secret, "--token", "s3cret", endpoint=ep)
    with Client(ep, tenant="t", token="s3cret", server_key=public) as c:
        c.register_model("m", [KernelSpec(name="k", est_us=10)])
        assert c.run("m", timeout=5).exec_ms > 0
    with pytest.raises(ConnectError):  # no server key: the CURVE handshake never completes
        Client(ep, tenant="t", token="s3cret", timeout=0.5)
    with pytest.raises(ConnectError, match="AUTH"):  # right key, wrong token
        Client(ep, tenant="t", token="wrong", server_key=public, timeout=2)


def test_ipc_socket_is_owner_only(daemon):
    path = daemon[len("ipc://"):]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600



@pytest.mark.parametrize("text,match", [("alice: short\n", "16-256 characters"),
                                        ("- a\n- b\n", "expected a mapping"),
                                        ("'bad name!': xxxxxxxxxxxxxxxxxxxx\n", "tenant name"),
                                        ("a: [\n", "not valid YAML")])
@pytest.mark.slow
def test_bad_tenant_tokens_file_is_a_usage_error(tmp_path, text, match):
    import subprocess
    import sys
    f = tmp_path / "t.yaml"
    f.write_text(text)
    r = subprocess.run([sys.executable, "-m", "gpusched.cli", "daemon", "--backend", "sim",
                        "--tenant-tokens", str(f), "--endpoint", f"ipc://{tmp_path}/x.sock"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert match in r.stderr


def test_frame_size_limit(daemon_factory):
    """A frame over --max-frame-bytes: the client library refuses to send it, naming the limit;
    a raw peer that sends one anyway is disconnected by libzmq, and the daemon serves on."""
    import numpy as np

    from scheduler_daemon.wire import protocol as P
    from tests.wire import RawPeer
    _, ep = daemon_factory("--backend", "sim", "--max-frame-bytes", "1048576",
                           "--client-timeout", "10")
    big = np.zeros(1 << 19, dtype=np.float32)          # 2 MiB
    with Client(ep, tenant="t") as c:
        assert c.welcome.limits.max_frame_bytes == 1 << 20
        c.register_model("m", [KernelSpec(name="k", est_us=10)])
        with pytest.raises(ValueError, match=r"1048576 bytes"):
            c.submit("m", [big])
        peer = RawPeer(ep)
        peer.hello("raw")
        peer.send_msg(P.Submit(req_id=1, model="m", inputs=[P.TensorMeta("float32", [1 << 19])]),
                      big.tobytes())
        with pytest.raises(TimeoutError):
            peer.recv(timeout_ms=1000)                   # dropped, never answered
        peer.close()
        assert c.run("m", [big[:1000]], timeout=5).exec_ms > 0
