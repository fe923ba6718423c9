// vmplug's peer-credentials addon: getsockopt(SO_PEERCRED) on an accepted unix socket's fd, which
// Node has no API for. vmplugd logs the caller's uid, gid and pid with every mutating request
// (the audit line, daemon/http/audit.ts). SO_PEERCRED is what the kernel recorded when the peer
// called connect(): one cheap syscall, no /proc scan, no race with the peer exiting. Built as its
// own target beside the libvirt addon (binding.gyp) and linked against nothing but libc.
#include <napi.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace {

std::string ErrnoName(int e) {
  switch (e) {
    case EBADF: return "EBADF";
    case ENOTSOCK: return "ENOTSOCK";
    case ENOTCONN: return "ENOTCONN";
    case EINVAL: return "EINVAL";
    case ENOPROTOOPT: return "ENOPROTOOPT";
    default: return "E" + std::to_string(e);
  }
}

// peerCred(fd) -> { pid, uid, gid }; throws an Error with `code` (EBADF, ENOTSOCK...) on failure.
Napi::Value PeerCred(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) {
    throw Napi::TypeError::New(env, "peerCred(fd): fd must be a number");
  }
  const int fd = info[0].As<Napi::Number>().Int32Value();
  struct ucred cred;
  socklen_t len = sizeof(cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    const int e = errno;
    Napi::Error err = Napi::Error::New(env, std::string("getsockopt(SO_PEERCRED): ") + std::strerror(e));
    err.Set("code", Napi::String::New(env, ErrnoName(e)));
    throw err;
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("pid", Napi::Number::New(env, cred.pid));
  out.Set("uid", Napi::Number::New(env, cred.uid));
  out.Set("gid", Napi::Number::New(env, cred.gid));
  return out;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("peerCred", Napi::Function::New(env, PeerCred, "peerCred"));
  return exports;
}

}  // namespace

NODE_API_MODULE(vmplug_peercred, Init)
