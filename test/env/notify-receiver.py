#!/usr/bin/python3
# Stands in for systemd's notification socket in tests (Node 20 cannot receive unix datagrams):
# binds an AF_UNIX datagram socket with SO_PASSCRED, as systemd's manager does, and prints one JSON
# line per datagram with the sender's pid from SCM_CREDENTIALS (what NotifyAccess=main checks),
# the assignments, and the receive time. "ready" is printed once the socket is bound.
import json
import os
import socket
import struct
import sys
import time

path = sys.argv[1]
try:
    os.unlink(path)
except FileNotFoundError:
    pass
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
s.bind(path)
print(json.dumps({"ready": True}), flush=True)
ucred = struct.calcsize("iII")
while True:
    # Room for credentials and a few fds; passed fds (BARRIER=1) are closed at once, as systemd does.
    msg, anc, _flags, _addr = s.recvmsg(4096, socket.CMSG_SPACE(ucred) + socket.CMSG_SPACE(16 * 4))
    pid = None
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid, _uid, _gid = struct.unpack("iII", data[:ucred])
        elif level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            for i in range(len(data) // 4):
                os.close(struct.unpack_from("i", data, i * 4)[0])
    text = msg.decode("utf-8", "replace")
    print(json.dumps({"pid": pid, "assignments": text.split("\n"), "at": time.time()}), flush=True)
