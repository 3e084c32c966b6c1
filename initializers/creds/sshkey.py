"""Checking an ssh private key before ssh meets it: a clear error for a broken or passphrase-protected key.

Keys in the OpenSSH format (ssh-keygen's default since 7.8) are checked by reading the
container directly: paramiko would cost ~90 ms of imports on every creds-init start-up,
three times the whole budget. Every other format (PEM, PKCS#8) is loaded by paramiko.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct

from stepkit.errors import InputError

_OPENSSH_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
_OPENSSH_END = "-----END OPENSSH PRIVATE KEY-----"
_MAGIC = b"openssh-key-v1\x00"
_KNOWN_TYPES = {
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
}
# Types ssh could name but a build pod can't use: security keys need their hardware token
# at every login, and OpenSSH no longer accepts DSA by default.
_UNUSABLE_TYPES = {
    "ssh-dss": "DSA keys are disabled in current OpenSSH",
    "sk-ssh-ed25519@openssh.com": "security-key (sk-) keys need their hardware token",
    "sk-ecdsa-sha2-nistp256@openssh.com": "security-key (sk-) keys need their hardware token",
}


class _Bad(Exception):
    pass


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _Bad
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        value: int = struct.unpack(">I", self.take(4))[0]
        return value

    def string(self) -> bytes:
        return self.take(self.u32())


def _wire(*fields: bytes) -> bytes:
    """Fields as the ssh wire format writes them: each a 32-bit length, then the bytes."""
    return b"".join(struct.pack(">I", len(f)) + f for f in fields)


def normalise(text: str) -> str:
    """CRLF to LF, surrounding blank space dropped, exactly one final newline (ssh needs it)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip() + "\n"


def _check_openssh(text: str, where: str) -> None:
    lines = text.strip().split("\n")
    if lines[-1].strip() != _OPENSSH_END:
        raise InputError(f"{where}: ssh-privatekey is not a valid private key (truncated)")
    try:
        blob = base64.b64decode("".join(line.strip() for line in lines[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(
            f"{where}: ssh-privatekey is not a valid private key (bad base64)"
        ) from None
    bad = InputError(f"{where}: ssh-privatekey is not a valid OpenSSH private key")
    try:
        if not blob.startswith(_MAGIC):
            raise _Bad
        r = _Reader(blob[len(_MAGIC) :])
        cipher = r.string()
        r.string()  # kdf name
        r.string()  # kdf options
        if cipher != b"none":
            raise InputError(
                f"{where}: ssh-privatekey is protected by a passphrase; "
                "a build needs a key without one (ssh-keygen -p -N '' to remove it)"
            )
        if r.u32() != 1:
            raise _Bad
        public = _Reader(r.string())
        pub_type = public.string().decode("ascii")
        private = _Reader(r.string())
        if private.u32() != private.u32():
            raise _Bad
        key_type = private.string().decode("ascii")
        if pub_type in _UNUSABLE_TYPES:
            raise InputError(
                f"{where}: ssh-privatekey is a {pub_type} key, which a build cannot use: "
                f"{_UNUSABLE_TYPES[pub_type]}; use an ed25519, ecdsa or rsa key"
            )
        if key_type != pub_type or key_type not in _KNOWN_TYPES:
            raise _Bad
        if key_type == "ssh-ed25519":
            pub, priv = private.string(), private.string()
            if len(pub) != 32 or len(priv) != 64 or priv[32:] != pub:
                raise _Bad
            public_fields = [pub]
        elif key_type == "ssh-rsa":
            n, e, d, iqmp, p, q = (private.string() for _ in range(6))
            if not all((n, e, d, iqmp, p, q)):
                raise _Bad
            public_fields = [e, n]
        elif key_type.startswith("ecdsa-"):
            curve, point, _d = private.string(), private.string(), private.string()
            public_fields = [curve, point]
        else:
            raise _Bad
        # ssh refuses a key whose public half does not match its private half (OpenSSH
        # compares them on load): a damaged public part must fail here, not in a later step.
        if public.data != _wire(key_type.encode("ascii"), *public_fields):
            raise _Bad
        private.string()  # comment
        padding = private.data[private.pos :]
        if padding != bytes(range(1, len(padding) + 1)):
            raise _Bad
    except (_Bad, UnicodeDecodeError):
        raise bad from None


def _check_with_paramiko(text: str, where: str) -> None:
    import paramiko

    loaders: list[type[paramiko.PKey]] = [paramiko.RSAKey, paramiko.ECDSAKey, paramiko.Ed25519Key]
    for loader in loaders:
        try:
            loader.from_private_key(io.StringIO(text))
            return
        except paramiko.PasswordRequiredException:
            raise InputError(
                f"{where}: ssh-privatekey is protected by a passphrase; "
                "a build needs a key without one (ssh-keygen -p -N '' to remove it)"
            ) from None
        except (paramiko.SSHException, ValueError, TypeError, IndexError):
            continue
    # paramiko's messages can quote the key material: say only what is wrong.
    raise InputError(
        f"{where}: ssh-privatekey is not a valid private key (expected OpenSSH or PEM format)"
    )


def check(text: str, where: str) -> str:
    """Return the key normalised for ssh, or raise InputError without echoing any key byte."""
    key = normalise(text)
    first = key.split("\n", 1)[0].strip()
    if first == _OPENSSH_BEGIN:
        _check_openssh(key, where)
    elif first.startswith("-----BEGIN ") and first.endswith("PRIVATE KEY-----"):
        _check_with_paramiko(key, where)
    else:
        raise InputError(
            f"{where}: ssh-privatekey is not a private key (expected a '-----BEGIN ... PRIVATE "
            "KEY-----' block)"
        )
    return key
