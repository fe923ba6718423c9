#!/usr/bin/python3
# A stand-in for systemd's socket activation in tests: binds and listens on a unix stream socket
# once, then starts the given command as many times as asked, each time the way systemd does
# (fork; in the child: the socket on fd 3, LISTEN_FDS=1, LISTEN_PID=<its own pid>,
# LISTEN_FDNAMES, then exec). It holds the socket across the command's restarts, so connections
# made while none runs wait in the backlog. Never accepts a connection itself.
#
# Usage: socket-activator.py <socket path> <log file> <command> [args...]
# stdin: one "start" per line. stdout: JSON lines {"ready"}, {"started": pid}, {"exited": pid, "code", "signal"}.
import json
import os
import selectors
import signal
import socket
import sys

path, log_path, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
try:
    os.unlink(path)
except FileNotFoundError:
    pass
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(path)
listener.listen(128)
os.chmod(path, 0o660)


def say(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def start():
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    pid = os.fork()
    if pid == 0:
        try:
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            if listener.fileno() != 3:
                os.dup2(listener.fileno(), 3)
            os.set_inheritable(3, True)  # Python's sockets are close-on-exec
            os.closerange(4, 1024)
            env = dict(os.environ, LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="vmplugd.socket")
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    os.close(log)
    say({"started": pid})


# Children are reaped through a self-pipe woken by SIGCHLD, so stdin and exits share one loop.
wake_r, wake_w = os.pipe()
os.set_blocking(wake_w, False)
signal.set_wakeup_fd(wake_w)
signal.signal(signal.SIGCHLD, lambda *_: None)
sel = selectors.DefaultSelector()
sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
sel.register(wake_r, selectors.EVENT_READ, "wake")
say({"ready": True})
while True:
    for key, _ in sel.select():
        if key.data == "stdin":
            line = sys.stdin.readline()
            if line == "":
                sys.exit(0)
            if line.strip() == "start":
                start()
        else:
            os.read(wake_r, 512)
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                say({
                    "exited": pid,
                    "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                    "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                })
