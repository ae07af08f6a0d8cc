"""Driver of cross/smoke-arm64.sh (host side: broker, ingest, checks; target side: chroot)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.devtools.mosquitto import LocalBroker  # noqa: E402
from agent.sources.synthetic import write_clip  # noqa: E402

ROOTFS = Path(os.environ.get("LEPTON_ROOTFS", REPO / "build" / "rootfs-arm64"))
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
       "QEMU_CPU": os.environ.get("QEMU_CPU", "cortex-a72"), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def step(title: str) -> float:
    print(f"== {title}", flush=True)
    return time.monotonic()


def chroot(*args: str, timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["chroot", str(ROOTFS), *args], env=ENV, capture_output=True, text=True,
                         timeout=timeout)
    if check and out.returncode != 0:
        raise SystemExit(f"smoke-arm64: `{' '.join(args)}` failed ({out.returncode}):\n"
                         f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


class Mounts:
    """/proc, /sys and /dev inside the rootfs for the duration of the test."""

    def __enter__(self) -> Mounts:
        self.done: list[Path] = []
        for fs, target, opts in (("proc", "proc", ["-t", "proc"]), ("sysfs", "sys", ["-t", "sysfs"]),
                                 ("/dev", "dev", ["--bind"])):
            path = ROOTFS / target
            subprocess.run(["mount", *opts, fs, str(path)], check=True)
            self.done.append(path)
        return self

    def __exit__(self, *exc: object) -> None:
        for path in reversed(self.done):
            subprocess.run(["umount", "-l", str(path)], check=False)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=12)
    args = parser.parse_args()
    timings: dict[str, float] = {}
    src = ROOTFS / "src" / "lepton"
    shutil.rmtree(ROOTFS / "src", ignore_errors=True)
    src.mkdir(parents=True)
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.split(b"\0")
    for name in filter(None, files):
        path = REPO / name.decode()
        if path.is_file():
            (src / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, src / name.decode())
    with Mounts():
        t = step("build the aarch64 wheel inside the rootfs")
        chroot("sh", "-c", "cd /src/lepton && python3 -m pip wheel --no-deps -w /src/dist . 2>&1")
        wheel = next((ROOTFS / "src" / "dist").glob("lepton_edge-*.whl"))
        if "aarch64" not in wheel.name:
            raise SystemExit(f"smoke-arm64: expected an aarch64 wheel, got {wheel.name}")
        timings["wheel_s"] = time.monotonic() - t
        t = step(f"package and install {wheel.name}")
        deb = subprocess.run(["cross/build-deb.sh", "arm64", str(wheel), "", str(REPO / "build/deb")],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        shutil.copy(deb, ROOTFS / "tmp" / "lepton-edge.deb")
        chroot("dpkg", "-i", "/tmp/lepton-edge.deb")
        timings["install_s"] = time.monotonic() - t
        for must in ("/opt/lepton/venv/bin/lepton-agent", "/lib/systemd/system/lepton-agent.service",
                     "/etc/lepton/credentials/mqtt-password", "/etc/lepton/agent.toml"):
            if not (ROOTFS / must.lstrip("/")).exists():
                raise SystemExit(f"smoke-arm64: the package did not install {must}")
        groups = chroot("id", "-nG", "lepton").stdout.split()
        if not {"video", "dialout"} <= set(groups):
            raise SystemExit(f"smoke-arm64: lepton is in {groups}, not video and dialout")
        agent = ["runuser", "-u", "lepton", "--", "/opt/lepton/venv/bin/lepton-agent"]
        t = step("lepton-agent diag --json (qemu-arm64 board: default delegates off)")
        diag = json.loads(chroot(*agent, "diag", "--board", "qemu-arm64", "--json", "kernels", "model",
                                 "memory", check=False).stdout)
        checks = {c["name"]: c for c in diag["checks"]}
        print(json.dumps({n: (c["status"], c["reason"]) for n, c in checks.items()}, indent=1))
        if checks["kernels"]["details"]["variant"] != "neon" or checks["kernels"]["status"] != "pass":
            raise SystemExit("smoke-arm64: the NEON kernels are not active or failed their self-test")
        if checks["model"]["status"] != "pass":
            raise SystemExit(f"smoke-arm64: model check: {checks['model']}")
        timings["diag_s"] = time.monotonic() - t
        t = step("lepton-agent bench analytics under qemu-aarch64 (tracker + counting per frame)")
        bench = json.loads(chroot(*agent, "bench", "analytics", "--tracks", "10", "50", "200",
                                  "--frames", "150", "--repeats", "1", "--json").stdout)
        tracker_ms = bench["cost_ms_per_frame"]["lepton"]
        timings["bench_analytics_s"] = time.monotonic() - t
        clip = ROOTFS / "tmp" / "clip.avi"
        write_clip(str(clip), 320, 240, 10.0, args.frames, seed=4)
        os.chmod(clip, 0o644)
        with LocalBroker() as broker:
            db = REPO / "build" / "smoke-ingest.db"
            db.unlink(missing_ok=True)
            ready = REPO / "build" / "smoke-ingest.ready"
            ready.unlink(missing_ok=True)
            ingest = subprocess.Popen([sys.executable, "-m", "agent", "ingest", "--broker", broker.url,
                                       "--db", f"sqlite:///{db}", "--ready-file", str(ready),
                                       "--client-id", "smoke-ingest"], cwd=REPO)
            while not ready.exists():
                time.sleep(0.1)
            t = step(f"lepton-agent run on {args.frames} frames, publishing to {broker.url}")
            out = chroot(*agent, "run", "--board", "qemu-arm64", "--source", "/tmp/clip.avi",
                         "--state-dir", "/var/lib/lepton-agent", "--device-id", "arm64-smoke",
                         "--site", "qemu", "--broker", broker.url, "--json", "--log-level", "warning")
            summary = json.loads(out.stdout.strip().splitlines()[-1])
            timings["run_s"] = time.monotonic() - t
            deadline = time.monotonic() + 30
            stored = 0
            while time.monotonic() < deadline:
                with sqlite3.connect(db) as conn:
                    stored = conn.execute("SELECT COUNT(*) FROM records WHERE device = 'arm64-smoke'"
                                          ).fetchone()[0]
                if stored >= args.frames:
                    break
                time.sleep(0.2)
            ingest.terminate()
            ingest.wait(10)
    # A figure, not a check: qemu-user runs the aarch64 numpy/lap code translated, so it says
    # what the emulated board costs relative to x86, not what a Pi 4 measures.
    print(json.dumps({"summary": summary, "ingested": stored,
                      "tracker_ms_per_frame_qemu_aarch64": tracker_ms,
                      "timings_s": {k: round(v, 1) for k, v in timings.items()}}, indent=1))
    ok = summary["frames_processed"] == args.frames and stored == args.frames and summary["backlog"] == 0
    print(f"{1 if ok else 0} passed, {0 if ok else 1} failed")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
