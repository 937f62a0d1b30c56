"""Evidence from the Linux configfs-tsm interface (Documentation/ABI/testing/configfs-tsm-report).

    mkdir /sys/kernel/config/tsm/report/NAME
    write NAME/inblob   (<= 64 bytes of report data)
    read  NAME/provider (e.g. "sev_guest", "tdx_guest"), NAME/generation
    read  NAME/outblob  (SNP report / TDX quote), NAME/auxblob (SNP certificate table)
    rmdir NAME

`generation` is read before and after: if another writer touched the entry in between, the
blob may answer someone else's inblob, so the read is refused.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from p2pinfer.trust.errors import TeeUnavailable

TSM_REPORT_DIR = Path("/sys/kernel/config/tsm/report")
MAX_BLOB = 1 << 20


@dataclass(frozen=True)
class TsmReport:
    provider: str
    outblob: bytes
    auxblob: bytes


def available(root: Path = TSM_REPORT_DIR) -> bool:
    return root.is_dir()


def get_report(
    inblob: bytes,
    *,
    expect_provider: str,
    privlevel: int | None = None,
    root: Path = TSM_REPORT_DIR,
) -> TsmReport:
    """Ask the kernel's TSM for a report over `inblob`; raises `TeeUnavailable` when absent."""
    if len(inblob) > 64:
        raise ValueError("configfs-tsm inblob is at most 64 bytes")
    if not root.is_dir():
        raise TeeUnavailable(f"no configfs-tsm report interface at {root}")
    entry = root / f"p2pinfer-{secrets.token_hex(8)}"
    try:
        os.mkdir(entry)
    except OSError as exc:
        raise TeeUnavailable(f"cannot create configfs-tsm entry: {exc.strerror}") from None
    try:
        provider = _read(entry / "provider").decode("ascii", "replace").strip()
        if provider != expect_provider:
            raise TeeUnavailable(f"configfs-tsm provider is {provider!r}, not {expect_provider!r}")
        if privlevel is not None:
            (entry / "privlevel").write_text(str(privlevel))
        (entry / "inblob").write_bytes(bytes(inblob))
        gen_before = _read(entry / "generation")
        outblob = _read(entry / "outblob")
        aux_path = entry / "auxblob"
        auxblob = _read(aux_path) if aux_path.exists() else b""
        if _read(entry / "generation") != gen_before:
            raise TeeUnavailable("configfs-tsm entry changed while reading; retry")
        return TsmReport(provider=provider, outblob=outblob, auxblob=auxblob)
    except OSError as exc:
        raise TeeUnavailable(f"configfs-tsm report failed: {exc.strerror or exc}") from None
    finally:
        try:
            os.rmdir(entry)
        except OSError:
            pass


def _read(path: Path) -> bytes:
    with open(path, "rb") as f:
        data = f.read(MAX_BLOB + 1)
    if len(data) > MAX_BLOB:
        raise TeeUnavailable(f"configfs-tsm {path.name} larger than {MAX_BLOB} bytes")
    return data
