"""Run `legaltune train` into a size-limited tmpfs, then enlarge it and resume; print what happened as JSON.

Used by tests/test_full_disk.py, as root or inside `unshare --user --map-root-user --mount` (a
tmpfs can be mounted in a user namespace), so the mount never needs the host's root:

    python tests/full_disk_driver.py WORKDIR SIZE [logging.key=value ...]

or, for the other commands, run one legaltune command against a tmpfs filled to the last byte (a
run directory copied onto it first when RUN is not "-"; "{mnt}" in the arguments is the tmpfs):

    python tests/full_disk_driver.py command WORKDIR SIZE RUN ARG...
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.train_cli import run, write_config  # noqa: E402


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def mount(work: str, size: str) -> Path | None:
    mnt = Path(work) / "small"
    mnt.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True
    )
    if mounted.returncode != 0:
        print(json.dumps({"no_mount": mounted.stderr.decode(errors="replace")}))
        return None
    return mnt


def fill(mnt: Path) -> None:
    """Write a file until the file system has no byte left (then every later write fails)."""
    with open(mnt / "filler", "wb", buffering=0) as f:
        for chunk in (2**16, 2**10, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                pass


def command(work: str, size: str, run_dir: str, *args: str) -> None:
    mnt = mount(work, size)
    if mnt is None:
        return
    try:
        if run_dir != "-":
            shutil.copytree(run_dir, mnt / "run")
        fill(mnt)
        done = run(*(a.replace("{mnt}", str(mnt)) for a in args))
        files = [f for f in listing(mnt) if f != "filler"]
        print(json.dumps({"rc": done.returncode, "stderr": done.stderr[-4000:], "files": files}))
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def main() -> None:
    if sys.argv[1] == "command":
        command(*sys.argv[2:])
        return
    work, size, *sets = sys.argv[1:]
    mnt = mount(work, size)
    if mnt is None:
        return
    try:
        overrides = dict(s.split("=", 1) for s in sets)
        logging = {k: (None if v == "null" else int(v) if v.isdigit() else v) for k, v in overrides.items()}
        cfg = write_config(Path(work) / "c.yaml", mnt / "runs", max_steps=2, **logging)
        first = run("train", str(cfg))
        out = {
            "first": {"rc": first.returncode, "stderr": first.stderr[-4000:], "files": listing(mnt / "runs")}
        }
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        again = run("train", str(cfg), "--resume")
        summary = mnt / "runs" / "k" / "train_summary.json"
        out["resumed"] = {
            "rc": again.returncode,
            "stderr": again.stderr[-4000:],
            "files": listing(mnt / "runs"),
            "summary": json.loads(summary.read_text()) if summary.is_file() else None,
        }
        print(json.dumps(out))
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


if __name__ == "__main__":
    main()
