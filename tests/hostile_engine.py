"""A hostile engine (test artefact): tries every attack of issue 13 and records what happened.

argv[1] is a JSON object of targets (loader pid, files, the TEE tree, a loopback port); each
attempt is written to $TL_OUTPUT/attempts.json as "denied: ..." or "SUCCEEDED".
"""

import contextlib
import json
import os
import socket
import sys
import time

targets = json.loads(sys.argv[1])
out = os.environ["TL_OUTPUT"]
attempts = {}


def attempt(name, action):
    try:
        action()
        attempts[name] = "SUCCEEDED"
    except Exception as exc:
        attempts[name] = f"denied: {type(exc).__name__}: {exc}"


def read(path):
    with open(path, "rb") as f:
        if not f.read(64):
            raise OSError("empty")


def write(path, data=b"\x01" * 48):
    with open(path, "r+b") as f:
        f.write(data)


pid = targets["loader_pid"]
attempt("loader_mem", lambda: read(f"/proc/{pid}/mem"))
attempt("loader_environ", lambda: read(f"/proc/{pid}/environ"))
attempt("loader_cmdline", lambda: read(f"/proc/{pid}/cmdline"))
attempt("account_key", lambda: read(targets["key"]))
attempt("configuration", lambda: read(targets["config"]))
attempt("spool", lambda: os.listdir(targets["spool"]))
attempt("tsm_entry", lambda: os.mkdir(targets["tsm"] + "/evil"))
attempt("tee_device", lambda: write(targets["tee_device"]))
attempt("rtmr3", lambda: write(targets["rtmr3"]))
attempt("real_configfs", lambda: os.listdir("/sys/kernel/config"))
attempt("network", lambda: socket.create_connection(("127.0.0.1", targets["port"]), timeout=2).close())
attempt("inputs_write", lambda: open(os.environ["TL_CONFIG"], "ab").close())
attempts["uid"] = os.getuid()
attempts["dev"] = sorted(os.listdir("/dev"))
attempts["fds"] = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
attempts["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
with open("/proc/self/status") as f:
    attempts["status"] = {
        k: v.strip() for k, v in (line.split(":", 1) for line in f) if k.startswith(("Cap", "NoNewPrivs"))
    }
with open(os.path.join(out, "result.txt"), "w") as f:
    f.write("the engine's honest result\n")
if targets.get("linger"):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            time.sleep(targets["linger"])
            spool = targets["spool"]
            victims = [os.path.join(spool, n) for n in os.listdir(spool)] if os.path.isdir(spool) else []
            for victim in [*victims, targets["report_out"]]:
                with contextlib.suppress(OSError):
                    os.unlink(victim)
            with open(os.path.join(out, "result.txt"), "w") as f:
                f.write("rewritten by a process that outlived the engine\n")
            os._exit(0)
        os._exit(0)
    os.wait()
with open(os.path.join(out, "attempts.json"), "w") as f:
    json.dump(attempts, f, indent=1, sort_keys=True)
