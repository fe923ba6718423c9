// vmplug's kernel-keyring addon: the add_key(2) and keyctl(2) calls vmplugd needs to keep the cephx
// key of each published rbd volume in the kernel (storage/key-custody.ts), so a storage daemon
// that dies after a vmplugd restart can be started again without the key ever touching a file,
// an argv or a log. Node has no API for these syscalls and libkeyutils is not needed for six of
// them: they go through syscall(2) directly. Built as its own target beside the libvirt addon
// (binding.gyp), linked against nothing but libc.
//
// Payloads cross the boundary as Buffers (never JS strings), and the addon's own copy of a key
// read back is zeroed before it is freed.
#include <linux/keyctl.h>
#include <napi.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

namespace {

using serial_t = int32_t;

long AddKey(const char* type, const char* desc, const void* payload, size_t len, serial_t ring) {
  return syscall(SYS_add_key, type, desc, payload, len, ring);
}

long Keyctl(int op, unsigned long a2, unsigned long a3 = 0, unsigned long a4 = 0, unsigned long a5 = 0) {
  return syscall(SYS_keyctl, op, a2, a3, a4, a5);
}

std::string ErrnoName(int e) {
  switch (e) {
    case ENOKEY: return "ENOKEY";
    case EKEYEXPIRED: return "EKEYEXPIRED";
    case EKEYREVOKED: return "EKEYREVOKED";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case ENOSYS: return "ENOSYS";
    case EDQUOT: return "EDQUOT";
    case EINVAL: return "EINVAL";
    case ENOMEM: return "ENOMEM";
    default: return "E" + std::to_string(e);
  }
}

[[noreturn]] void ThrowErrno(Napi::Env env, const char* what, int e) {
  Napi::Error err = Napi::Error::New(env, std::string(what) + ": " + std::strerror(e));
  err.Set("code", Napi::String::New(env, ErrnoName(e)));
  throw err;
}

// Possessor: everything. User (the owner, uid 0 for vmplugd): view, read, write, search, link,
// setattr. Nobody else. The user bits matter: a restarted vmplugd (or a new container of the
// DaemonSet) has a new session keyring that does not link @u, so it is no longer a "possessor"
// of what the previous process added; the owner's bits are what let it read the key again.
// (keyutils.h's KEY_POS_ALL | KEY_USR_ALL; <linux/keyctl.h> does not define them.)
constexpr uint32_t kPerm = 0x3f000000u | 0x003f0000u;

serial_t ArgSerial(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsNumber()) {
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a number");
  }
  return info[i].As<Napi::Number>().Int32Value();
}

std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsString()) {
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a string");
  }
  return info[i].As<Napi::String>().Utf8Value();
}

// search(ring, type, description) -> serial | null (ENOKEY). ring may be a special id (@u = -4).
Napi::Value Search(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const serial_t ring = ArgSerial(info, 0, "ring");
  const std::string type = ArgString(info, 1, "type");
  const std::string desc = ArgString(info, 2, "description");
  const long id = Keyctl(KEYCTL_SEARCH, ring, reinterpret_cast<unsigned long>(type.c_str()),
                         reinterpret_cast<unsigned long>(desc.c_str()), 0);
  if (id < 0) {
    if (errno == ENOKEY) return env.Null();
    ThrowErrno(env, "keyctl(KEYCTL_SEARCH)", errno);
  }
  return Napi::Number::New(env, static_cast<double>(id));
}

// add(type, description, payload: Buffer | null, ring) -> serial. Replaces the payload of a key
// of the same type and description in that ring (add_key's own semantics); sets kPerm.
Napi::Value Add(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string type = ArgString(info, 0, "type");
  const std::string desc = ArgString(info, 1, "description");
  const void* data = nullptr;
  size_t len = 0;
  if (info.Length() > 2 && info[2].IsBuffer()) {
    auto buf = info[2].As<Napi::Buffer<uint8_t>>();
    data = buf.Data();
    len = buf.Length();
  } else if (info.Length() <= 2 || !info[2].IsNull()) {
    throw Napi::TypeError::New(env, "payload must be a Buffer or null");
  }
  const serial_t ring = ArgSerial(info, 3, "ring");
  const long id = AddKey(type.c_str(), desc.c_str(), data, len, ring);
  if (id < 0) ThrowErrno(env, "add_key", errno);
  if (Keyctl(KEYCTL_SETPERM, id, kPerm) < 0) ThrowErrno(env, "keyctl(KEYCTL_SETPERM)", errno);
  return Napi::Number::New(env, static_cast<double>(id));
}

// The raw KEYCTL_READ: the size first, then into a buffer of that size (retried if it grew).
std::vector<uint8_t> ReadRaw(Napi::Env env, serial_t id) {
  std::vector<uint8_t> buf;
  for (int attempt = 0; attempt < 4; attempt++) {
    const long n = Keyctl(KEYCTL_READ, id, reinterpret_cast<unsigned long>(buf.data()), buf.size());
    if (n < 0) ThrowErrno(env, "keyctl(KEYCTL_READ)", errno);
    if (static_cast<size_t>(n) <= buf.size()) {
      buf.resize(static_cast<size_t>(n));
      return buf;
    }
    std::fill(buf.begin(), buf.end(), 0);
    buf.assign(static_cast<size_t>(n), 0);
  }
  ThrowErrno(env, "keyctl(KEYCTL_READ)", EAGAIN);
}

// read(serial) -> Buffer (a user key's payload). The addon's copy is zeroed.
Napi::Value Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<uint8_t> raw = ReadRaw(env, ArgSerial(info, 0, "serial"));
  Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::Copy(env, raw.data(), raw.size());
  std::fill(raw.begin(), raw.end(), 0);
  return out;
}

// list(ring) -> serials of the keys linked in a keyring.
Napi::Value List(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<uint8_t> raw = ReadRaw(env, ArgSerial(info, 0, "ring"));
  const size_t n = raw.size() / sizeof(serial_t);
  Napi::Array out = Napi::Array::New(env, n);
  for (size_t i = 0; i < n; i++) {
    serial_t id;
    std::memcpy(&id, raw.data() + i * sizeof(serial_t), sizeof(id));
    out.Set(static_cast<uint32_t>(i), Napi::Number::New(env, id));
  }
  return out;
}

// describe(serial) -> { type, uid, gid, perm, description } | null (the key is gone).
Napi::Value Describe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const serial_t id = ArgSerial(info, 0, "serial");
  std::vector<char> buf(256);
  for (;;) {
    const long n = Keyctl(KEYCTL_DESCRIBE, id, reinterpret_cast<unsigned long>(buf.data()), buf.size());
    if (n < 0) {
      if (errno == ENOKEY || errno == EKEYREVOKED || errno == EKEYEXPIRED) return env.Null();
      ThrowErrno(env, "keyctl(KEYCTL_DESCRIBE)", errno);
    }
    if (static_cast<size_t>(n) <= buf.size()) break;
    buf.assign(static_cast<size_t>(n), 0);
  }
  // "type;uid;gid;perm;description" (the description may itself hold ';').
  std::string s(buf.data());
  std::vector<std::string> parts;
  size_t start = 0;
  for (int i = 0; i < 4; i++) {
    const size_t semi = s.find(';', start);
    if (semi == std::string::npos) throw Napi::Error::New(env, "keyctl(KEYCTL_DESCRIBE): unexpected answer");
    parts.push_back(s.substr(start, semi - start));
    start = semi + 1;
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("type", parts[0]);
  out.Set("uid", Napi::Number::New(env, std::stod(parts[1])));
  out.Set("gid", Napi::Number::New(env, std::stod(parts[2])));
  out.Set("perm", Napi::Number::New(env, static_cast<double>(std::stoul(parts[3], nullptr, 16))));
  out.Set("description", s.substr(start));
  return out;
}

// invalidate(serial): the key is destroyed at once (its payload freed by the kernel's gc), from
// every keyring that links it. A key already gone is fine.
Napi::Value Invalidate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const serial_t id = ArgSerial(info, 0, "serial");
  if (Keyctl(KEYCTL_INVALIDATE, id) < 0 && errno != ENOKEY && errno != EKEYREVOKED && errno != EKEYEXPIRED) {
    ThrowErrno(env, "keyctl(KEYCTL_INVALIDATE)", errno);
  }
  return env.Undefined();
}

// unlink(serial, ring): a link gone already is fine.
Napi::Value Unlink(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const serial_t id = ArgSerial(info, 0, "serial");
  const serial_t ring = ArgSerial(info, 1, "ring");
  if (Keyctl(KEYCTL_UNLINK, id, ring) < 0 && errno != ENOKEY && errno != ENOENT) {
    ThrowErrno(env, "keyctl(KEYCTL_UNLINK)", errno);
  }
  return env.Undefined();
}

// link(serial, ring): `serial` linked into `ring` (a link already there is fine).
Napi::Value Link(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const serial_t id = ArgSerial(info, 0, "serial");
  const serial_t ring = ArgSerial(info, 1, "ring");
  if (Keyctl(KEYCTL_LINK, id, ring) < 0) ThrowErrno(env, "keyctl(KEYCTL_LINK)", errno);
  return env.Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("search", Napi::Function::New(env, Search, "search"));
  exports.Set("add", Napi::Function::New(env, Add, "add"));
  exports.Set("read", Napi::Function::New(env, Read, "read"));
  exports.Set("list", Napi::Function::New(env, List, "list"));
  exports.Set("describe", Napi::Function::New(env, Describe, "describe"));
  exports.Set("invalidate", Napi::Function::New(env, Invalidate, "invalidate"));
  exports.Set("unlink", Napi::Function::New(env, Unlink, "unlink"));
  exports.Set("link", Napi::Function::New(env, Link, "link"));
  exports.Set("USER_KEYRING", Napi::Number::New(env, KEY_SPEC_USER_KEYRING));
  exports.Set("SESSION_KEYRING", Napi::Number::New(env, KEY_SPEC_SESSION_KEYRING));
  return exports;
}

}  // namespace

NODE_API_MODULE(vmplug_keyring, Init)
