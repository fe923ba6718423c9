#include "conn.h"

#include <libvirt/virterror.h>
#include <string.h>

#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

namespace vmplug {

namespace {

std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsString()) {
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a string");
  }
  return info[i].As<Napi::String>().Utf8Value();
}

int64_t ArgInt(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t min, int64_t max) {
  if (info.Length() <= i || !info[i].IsNumber()) {
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a number");
  }
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= static_cast<double>(min) && v <= static_cast<double>(max)) || v != static_cast<double>(static_cast<int64_t>(v))) {
    throw Napi::RangeError::New(info.Env(), std::string(name) + " is out of range");
  }
  return static_cast<int64_t>(v);
}

unsigned int ArgFlags(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || info[i].IsUndefined()) return 0;
  return static_cast<unsigned int>(ArgInt(info, i, "flags", 0, std::numeric_limits<unsigned int>::max()));
}

Failure Closed() {
  Failure f;
  f.kind = "closed";
  f.message = "libvirt connection is closed";
  return f;
}

struct DomainRecord {
  std::string name;
  std::string uuid;
  int id = -1;
  int state = 0;
  int reason = 0;
};

// Fills `r`; false with `f` filled on failure (GetState is an RPC and can fail).
bool ReadRecord(virDomainPtr dom, DomainRecord& r, Failure& f) {
  const char* name = virDomainGetName(dom);
  char uuid[VIR_UUID_STRING_BUFLEN];
  if (name == nullptr || virDomainGetUUIDString(dom, uuid) < 0) {
    f = CaptureLibvirtError("virDomainGetName");
    return false;
  }
  r.name = name;
  r.uuid = uuid;
  unsigned int id = virDomainGetID(dom);
  r.id = id == static_cast<unsigned int>(-1) ? -1 : static_cast<int>(id);
  if (virDomainGetState(dom, &r.state, &r.reason, 0) < 0) {
    f = CaptureLibvirtError("virDomainGetState");
    return false;
  }
  return true;
}

Napi::Object ToJs(Napi::Env env, const DomainRecord& r) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("name", r.name);
  o.Set("uuid", r.uuid);
  o.Set("id", r.id);
  o.Set("state", r.state);
  o.Set("reason", r.reason);
  return o;
}

struct SecretRecord {
  std::string uuid;
  int usageType = 0;
  std::string usageId;
};

bool ReadSecret(virSecretPtr s, SecretRecord& r, Failure& f) {
  char uuid[VIR_UUID_STRING_BUFLEN];
  if (virSecretGetUUIDString(s, uuid) < 0) {
    f = CaptureLibvirtError("virSecretGetUUIDString");
    return false;
  }
  r.uuid = uuid;
  r.usageType = virSecretGetUsageType(s);
  const char* usage = virSecretGetUsageID(s);
  if (usage != nullptr) r.usageId = usage;
  return true;
}

Napi::Object ToJs(Napi::Env env, const SecretRecord& r) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("uuid", r.uuid);
  o.Set("usageType", r.usageType);
  o.Set("usageId", r.usageId);
  return o;
}

// Runs fn(conn) with a call reference on the connection.
template <typename F>
bool WithConn(const std::shared_ptr<ConnState>& st, Failure& f, F fn) {
  virConnectPtr c = st->Acquire(f);
  if (c == nullptr) return false;
  bool ok = fn(c);
  virConnectClose(c);
  return ok;
}

// Runs fn(conn, dom) with the domain of that UUID. Callers capture libvirt's error right after
// the failing call: the next libvirt call (even a free) resets it.
template <typename F>
bool WithDomain(const std::shared_ptr<ConnState>& st, const std::string& uuid, Failure& f, F fn) {
  return WithConn(st, f, [&](virConnectPtr c) {
    virDomainPtr d = virDomainLookupByUUIDString(c, uuid.c_str());
    if (d == nullptr) {
      f = CaptureLibvirtError("virDomainLookupByUUIDString");
      return false;
    }
    bool ok = fn(c, d);
    virDomainFree(d);
    return ok;
  });
}

template <typename F>
bool WithSecret(const std::shared_ptr<ConnState>& st, const std::string& uuid, Failure& f, F fn) {
  return WithConn(st, f, [&](virConnectPtr c) {
    virSecretPtr s = virSecretLookupByUUIDString(c, uuid.c_str());
    if (s == nullptr) {
      f = CaptureLibvirtError("virSecretLookupByUUIDString");
      return false;
    }
    bool ok = fn(s);
    virSecretFree(s);
    return ok;
  });
}

Napi::Value Undefined(Napi::Env env) { return env.Undefined(); }

// A copy of a secret value that is wiped when the call is done with it, whatever happened.
struct SecretBytes {
  std::vector<unsigned char> bytes;
  ~SecretBytes() {
    if (!bytes.empty()) explicit_bzero(bytes.data(), bytes.size());
  }
};

// A void domain operation: fn(dom) returns libvirt's int result.
template <typename F>
Napi::Value DomainOp(Napi::Env env, const char* op, std::shared_ptr<ConnState> st, std::string uuid, F fn) {
  return Job::Start(
      env, op,
      [st, uuid, fn, op](Failure& f) {
        return WithDomain(st, uuid, f, [&](virConnectPtr, virDomainPtr d) {
          if (fn(d) < 0) {
            f = CaptureLibvirtError(op);
            return false;
          }
          return true;
        });
      },
      Undefined);
}

}  // namespace

virConnectPtr ConnState::Acquire(Failure& failure) {
  std::lock_guard<std::mutex> lock(mu);
  if (conn == nullptr) {
    failure = Closed();
    return nullptr;
  }
  if (virConnectRef(conn) < 0) {
    failure = CaptureLibvirtError("virConnectRef");
    return nullptr;
  }
  return conn;
}

Napi::Function Connection::Define(Napi::Env env) {
  return DefineClass(env, "Connection",
                     {
                         InstanceMethod<&Connection::Close>("close"),
                         InstanceMethod<&Connection::IsAlive>("isAlive"),
                         InstanceMethod<&Connection::ListDomains>("listDomains"),
                         InstanceMethod<&Connection::LookupByName>("lookupByName"),
                         InstanceMethod<&Connection::LookupByUUID>("lookupByUUID"),
                         InstanceMethod<&Connection::GetXMLDesc>("getXMLDesc"),
                         InstanceMethod<&Connection::GetState>("getState"),
                         InstanceMethod<&Connection::GetInfo>("getInfo"),
                         InstanceMethod<&Connection::AttachDeviceFlags>("attachDeviceFlags"),
                         InstanceMethod<&Connection::DetachDeviceFlags>("detachDeviceFlags"),
                         InstanceMethod<&Connection::DetachDeviceAlias>("detachDeviceAlias"),
                         InstanceMethod<&Connection::SetVcpusFlags>("setVcpusFlags"),
                         InstanceMethod<&Connection::SetMemoryFlags>("setMemoryFlags"),
                         InstanceMethod<&Connection::BlockResize>("blockResize"),
                         InstanceMethod<&Connection::GetBlockInfo>("getBlockInfo"),
                         InstanceMethod<&Connection::Suspend>("suspend"),
                         InstanceMethod<&Connection::Resume>("resume"),
                         InstanceMethod<&Connection::Destroy>("destroy"),
                         InstanceMethod<&Connection::SecretDefineXML>("secretDefineXML"),
                         InstanceMethod<&Connection::SecretSetValue>("secretSetValue"),
                         InstanceMethod<&Connection::SecretUndefine>("secretUndefine"),
                         InstanceMethod<&Connection::SecretLookupByUUID>("secretLookupByUUID"),
                         InstanceMethod<&Connection::SecretLookupByUsage>("secretLookupByUsage"),
                         InstanceMethod<&Connection::ListSecrets>("listSecrets"),
                     });
}

Napi::Object Connection::NewInstance(Napi::Env env, std::shared_ptr<ConnState> state) {
  auto* ctor = env.GetInstanceData<Napi::FunctionReference>();
  return ctor->New({Napi::External<std::shared_ptr<ConnState>>::New(env, &state)});
}

Connection::Connection(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Connection>(info) {
  if (info.Length() != 1 || !info[0].IsExternal()) {
    throw Napi::TypeError::New(info.Env(), "use connect() to open a libvirt connection");
  }
  state_ = *info[0].As<Napi::External<std::shared_ptr<ConnState>>>().Data();
}

// A connection dropped without close() stays open until the process ends: closing it here
// would block the JS thread on an RPC. Its events stop reaching JS once Node finalizes the
// thread-safe function.
Connection::~Connection() = default;

Napi::Value Connection::Close(const Napi::CallbackInfo& info) {
  auto st = state_;
  return Job::Start(
      info.Env(), "close",
      [st](Failure&) {
        virConnectPtr c;
        {
          std::lock_guard<std::mutex> lock(st->mu);
          c = st->conn;
          st->conn = nullptr;
        }
        if (c != nullptr) {
          DeregisterEvents(c, st->reg);
          virConnectClose(c);
        }
        if (st->gate) st->gate->Close();
        return true;
      },
      Undefined);
}

Napi::Value Connection::IsAlive(const Napi::CallbackInfo& info) {
  auto st = state_;
  auto alive = std::make_shared<bool>(false);
  return Job::Start(
      info.Env(), "isAlive",
      [st, alive](Failure&) {
        Failure ignored;
        virConnectPtr c = st->Acquire(ignored);
        if (c == nullptr) return true;
        *alive = virConnectIsAlive(c) == 1;
        virConnectClose(c);
        return true;
      },
      [alive](Napi::Env env) { return Napi::Boolean::New(env, *alive); });
}

Napi::Value Connection::ListDomains(const Napi::CallbackInfo& info) {
  auto st = state_;
  auto out = std::make_shared<std::vector<DomainRecord>>();
  return Job::Start(
      info.Env(), "listDomains",
      [st, out](Failure& f) {
        return WithConn(st, f, [&](virConnectPtr c) {
          virDomainPtr* doms = nullptr;
          int n = virConnectListAllDomains(c, &doms, 0);
          if (n < 0) {
            f = CaptureLibvirtError("virConnectListAllDomains");
            return false;
          }
          bool ok = true;
          for (int i = 0; i < n; i++) {
            if (ok) {
              DomainRecord r;
              Failure rf;
              if (ReadRecord(doms[i], r, rf)) {
                out->push_back(std::move(r));
              } else if (rf.code != VIR_ERR_NO_DOMAIN) {
                // A domain that vanished between list and state is simply not listed.
                f = rf;
                ok = false;
              }
            }
            virDomainFree(doms[i]);
          }
          free(doms);
          return ok;
        });
      },
      [out](Napi::Env env) {
        Napi::Array a = Napi::Array::New(env, out->size());
        for (size_t i = 0; i < out->size(); i++) a.Set(i, ToJs(env, (*out)[i]));
        return a;
      });
}

Napi::Value Connection::LookupByName(const Napi::CallbackInfo& info) {
  std::string name = ArgString(info, 0, "name");
  auto st = state_;
  auto out = std::make_shared<DomainRecord>();
  return Job::Start(
      info.Env(), "lookupByName",
      [st, name, out](Failure& f) {
        return WithConn(st, f, [&](virConnectPtr c) {
          virDomainPtr d = virDomainLookupByName(c, name.c_str());
          if (d == nullptr) {
            f = CaptureLibvirtError("virDomainLookupByName");
            return false;
          }
          bool ok = ReadRecord(d, *out, f);
          virDomainFree(d);
          return ok;
        });
      },
      [out](Napi::Env env) { return ToJs(env, *out); });
}

Napi::Value Connection::LookupByUUID(const Napi::CallbackInfo& info) {
  std::string uuid = ArgString(info, 0, "uuid");
  auto st = state_;
  auto out = std::make_shared<DomainRecord>();
  return Job::Start(
      info.Env(), "lookupByUUID",
      [st, uuid, out](Failure& f) {
        return WithDomain(st, uuid, f, [&](virConnectPtr, virDomainPtr d) { return ReadRecord(d, *out, f); });
      },
      [out](Napi::Env env) { return ToJs(env, *out); });
}

Napi::Value Connection::GetXMLDesc(const Napi::CallbackInfo& info) {
  std::string uuid = ArgString(info, 0, "uuid");
  unsigned int flags = ArgFlags(info, 1);
  auto st = state_;
  auto out = std::make_shared<std::string>();
  return Job::Start(
      info.Env(), "getXMLDesc",
      [st, uuid, flags, out](Failure& f) {
        return WithDomain(st, uuid, f, [&](virConnectPtr, virDomainPtr d) {
          char* xml = virDomainGetXMLDesc(d, flags);
          if (xml == nullptr) {
            f = CaptureLibvirtError("virDomainGetXMLDesc");
            return false;
          }
          *out = xml;
          free(xml);
          return true;
        });
      },
      [out](Napi::Env env) { return Napi::String::New(env, *out); });
}

Napi::Value Connection::GetState(const Napi::CallbackInfo& info) {
  std::string uuid = ArgString(info, 0, "uuid");
  auto st = state_;
  auto out = std::make_shared<std::pair<int, int>>(0, 0);
  return Job::Start(
      info.Env(), "getState",
      [st, uuid, out](Failure& f) {
        return WithDomain(st, uuid, f, [&](virConnectPtr, virDomainPtr d) {
          if (virDomainGetState(d, &out->first, &out->second, 0) < 0) {
            f = CaptureLibvirtError("virDomainGetState");
            return false;
          }
          return true;
        });
      },
      [out](Napi::Env env) {
        Napi::Object o = Napi::Object::New(env);
        o.Set("state", out->first);
        o.Set("reason", out->second);
        return o;
      });
}

Napi::Value Connection::GetInfo(const Napi::CallbackInfo& info) {
  std::string uuid = ArgString(info, 0, "uuid");
  auto st = state_;
  auto out = std::make_shared<virDomainInfo>();
  return Job::Start(
      info.Env(), "getInfo",
      [st, uuid, out](Failure& f) {
        return WithDomain(st, uuid, f, [&](virConnectPtr, virDomainPtr d) {
          if (virDomainGetInfo(d, out.get()) < 0) {
            f = CaptureLibvirtError("virDomainGetInfo");
            return false;
          }
          return true;
        });
      },
      [out](Napi::Env env) {
        Napi::Object o = Napi::Object::New(env);
        o.Set("state", static_cast<double>(out->state));
        o.Set("maxMemoryKiB", static_cast<double>(out->maxMem));
        o.Set("memoryKiB", static_cast<double>(out->memory));
        o.Set("vcpus", static_cast<double>(out->nrVirtCpu));
        o.Set("cpuTimeNs", static_cast<double>(out->cpuTime));
        return o;
      });
}

Napi::Value Connection::AttachDeviceFlags(const Napi::CallbackInfo& info) {
  std::string uuid = ArgString(info, 0, "uuid");
  std::string xml = ArgString(info, 1, "xml");
  unsigned int flags = ArgFlags(info, 2);
  return DomainOp(info.Env(), "virDomainAttachDeviceFlags", state_, uuid,
                  [xml, flags](virDomainPtr d) { return virDomainAttachDeviceFlags(d, xml.c_str(), flags); });
}

Napi::Value Connection::DetachDeviceFlags(const Napi::CallbackInfo& info) {
  std::string uuid = ArgString(info, 0, "uuid");
  std::string xml = ArgString(info, 1, "xml");
  unsigned int flags = ArgFlags(info, 2);
  return DomainOp(info.Env(), "virDomainDetachDeviceFlags", state_, uuid,
                  [xml, flags](virDomainPtr d) { return virDomainDetachDeviceFlags(d, xml.c_str(), flags); });
}

Napi::Value Connection::DetachDeviceAlias(const Napi::CallbackInfo& info) {
  std::string uuid = ArgString(info, 0, "uuid");
  std::string alias = ArgString(info, 1, "alias");
  unsigned int flags = ArgFlags(info, 2);
  return DomainOp(info.Env(), "virDomainDetachDeviceAlias", state_, uuid,
                  [alias, flags](virDomainPtr d) { return virDomainDetachDeviceAlias(d, alias.c_str(), flags); });
}

Napi::Value Connection::SetVcpusFlags(const Napi::CallbackInfo& info) {
  std::string uuid = ArgString(info, 0, "uuid");
  auto n = static_cast<unsigned int>(ArgInt(info, 1, "vcpus", 1, 4096));
  unsigned int flags = ArgFlags(info, 2);
  return DomainOp(info.Env(), "virDomainSetVcpusFlags", state_, uuid,
                  [n, flags](virDomainPtr d) { return virDomainSetVcpusFlags(d, n, flags); });
}

Napi::Value Connection::SetMemoryFlags(const Napi::CallbackInfo& info) {
  std::string uuid = ArgString(info, 0, "uuid");
  auto kib = static_cast<unsigned long>(ArgInt(info, 1, "memoryKiB", 1, int64_t{1} << 50));
  unsigned int flags = ArgFlags(info, 2);
  return DomainOp(info.Env(), "virDomainSetMemoryFlags", state_, uuid,
                  [kib, flags](virDomainPtr d) { return virDomainSetMemoryFlags(d, kib, flags); });
}

// `disk` is a target name (sda, vdb) or a source path, as virsh blockresize takes it. The size is
// in bytes (VIR_DOMAIN_BLOCK_RESIZE_BYTES is always added).
Napi::Value Connection::BlockResize(const Napi::CallbackInfo& info) {
  std::string uuid = ArgString(info, 0, "uuid");
  std::string disk = ArgString(info, 1, "disk");
  auto bytes = static_cast<unsigned long long>(ArgInt(info, 2, "sizeBytes", 1, int64_t{1} << 53));
  unsigned int flags = ArgFlags(info, 3) | VIR_DOMAIN_BLOCK_RESIZE_BYTES;
  return DomainOp(info.Env(), "virDomainBlockResize", state_, uuid, [disk, bytes, flags](virDomainPtr d) {
    return virDomainBlockResize(d, disk.c_str(), bytes, flags);
  });
}

Napi::Value Connection::GetBlockInfo(const Napi::CallbackInfo& info) {
  std::string uuid = ArgString(info, 0, "uuid");
  std::string disk = ArgString(info, 1, "disk");
  auto st = state_;
  auto out = std::make_shared<virDomainBlockInfo>();
  return Job::Start(
      info.Env(), "getBlockInfo",
      [st, uuid, disk, out](Failure& f) {
        return WithDomain(st, uuid, f, [&](virConnectPtr, virDomainPtr d) {
          if (virDomainGetBlockInfo(d, disk.c_str(), out.get(), 0) < 0) {
            f = CaptureLibvirtError("virDomainGetBlockInfo");
            return false;
          }
          return true;
        });
      },
      [out](Napi::Env env) {
        Napi::Object o = Napi::Object::New(env);
        o.Set("capacity", static_cast<double>(out->capacity));
        o.Set("allocation", static_cast<double>(out->allocation));
        o.Set("physical", static_cast<double>(out->physical));
        return o;
      });
}

Napi::Value Connection::Suspend(const Napi::CallbackInfo& info) {
  return DomainOp(info.Env(), "virDomainSuspend", state_, ArgString(info, 0, "uuid"),
                  [](virDomainPtr d) { return virDomainSuspend(d); });
}

Napi::Value Connection::Resume(const Napi::CallbackInfo& info) {
  return DomainOp(info.Env(), "virDomainResume", state_, ArgString(info, 0, "uuid"),
                  [](virDomainPtr d) { return virDomainResume(d); });
}

Napi::Value Connection::Destroy(const Napi::CallbackInfo& info) {
  return DomainOp(info.Env(), "virDomainDestroy", state_, ArgString(info, 0, "uuid"),
                  [](virDomainPtr d) { return virDomainDestroy(d); });
}

Napi::Value Connection::SecretDefineXML(const Napi::CallbackInfo& info) {
  std::string xml = ArgString(info, 0, "xml");
  auto st = state_;
  auto out = std::make_shared<SecretRecord>();
  return Job::Start(
      info.Env(), "secretDefineXML",
      [st, xml, out](Failure& f) {
        return WithConn(st, f, [&](virConnectPtr c) {
          virSecretPtr s = virSecretDefineXML(c, xml.c_str(), 0);
          if (s == nullptr) {
            f = CaptureLibvirtError("virSecretDefineXML");
            return false;
          }
          bool ok = ReadSecret(s, *out, f);
          virSecretFree(s);
          return ok;
        });
      },
      [out](Napi::Env env) { return ToJs(env, *out); });
}

Napi::Value Connection::SecretSetValue(const Napi::CallbackInfo& info) {
  std::string uuid = ArgString(info, 0, "uuid");
  if (info.Length() < 2 || !info[1].IsBuffer()) throw Napi::TypeError::New(info.Env(), "value must be a Buffer");
  auto buf = info[1].As<Napi::Buffer<unsigned char>>();
  // Copied now: the JS buffer may be reused or wiped by the caller while the call runs.
  auto value = std::make_shared<SecretBytes>();
  value->bytes.assign(buf.Data(), buf.Data() + buf.Length());
  auto st = state_;
  return Job::Start(
      info.Env(), "secretSetValue",
      [st, uuid, value](Failure& f) {
        bool ok = WithSecret(st, uuid, f, [&](virSecretPtr s) {
          if (virSecretSetValue(s, value->bytes.data(), value->bytes.size(), 0) < 0) {
            f = CaptureLibvirtError("virSecretSetValue");
            return false;
          }
          return true;
        });
        explicit_bzero(value->bytes.data(), value->bytes.size());
        return ok;
      },
      Undefined);
}

Napi::Value Connection::SecretUndefine(const Napi::CallbackInfo& info) {
  std::string uuid = ArgString(info, 0, "uuid");
  auto st = state_;
  return Job::Start(
      info.Env(), "secretUndefine",
      [st, uuid](Failure& f) {
        return WithSecret(st, uuid, f, [&](virSecretPtr s) {
          if (virSecretUndefine(s) < 0) {
            f = CaptureLibvirtError("virSecretUndefine");
            return false;
          }
          return true;
        });
      },
      Undefined);
}

Napi::Value Connection::SecretLookupByUUID(const Napi::CallbackInfo& info) {
  std::string uuid = ArgString(info, 0, "uuid");
  auto st = state_;
  auto out = std::make_shared<SecretRecord>();
  return Job::Start(
      info.Env(), "secretLookupByUUID",
      [st, uuid, out](Failure& f) { return WithSecret(st, uuid, f, [&](virSecretPtr s) { return ReadSecret(s, *out, f); }); },
      [out](Napi::Env env) { return ToJs(env, *out); });
}

Napi::Value Connection::SecretLookupByUsage(const Napi::CallbackInfo& info) {
  auto usageType = static_cast<int>(ArgInt(info, 0, "usageType", 0, 64));
  std::string usageId = ArgString(info, 1, "usageId");
  auto st = state_;
  auto out = std::make_shared<SecretRecord>();
  return Job::Start(
      info.Env(), "secretLookupByUsage",
      [st, usageType, usageId, out](Failure& f) {
        return WithConn(st, f, [&](virConnectPtr c) {
          virSecretPtr s = virSecretLookupByUsage(c, usageType, usageId.c_str());
          if (s == nullptr) {
            f = CaptureLibvirtError("virSecretLookupByUsage");
            return false;
          }
          bool ok = ReadSecret(s, *out, f);
          virSecretFree(s);
          return ok;
        });
      },
      [out](Napi::Env env) { return ToJs(env, *out); });
}

Napi::Value Connection::ListSecrets(const Napi::CallbackInfo& info) {
  auto st = state_;
  auto out = std::make_shared<std::vector<SecretRecord>>();
  return Job::Start(
      info.Env(), "listSecrets",
      [st, out](Failure& f) {
        return WithConn(st, f, [&](virConnectPtr c) {
          virSecretPtr* secrets = nullptr;
          int n = virConnectListAllSecrets(c, &secrets, 0);
          if (n < 0) {
            f = CaptureLibvirtError("virConnectListAllSecrets");
            return false;
          }
          bool ok = true;
          for (int i = 0; i < n; i++) {
            SecretRecord r;
            if (ok && ReadSecret(secrets[i], r, f)) {
              out->push_back(std::move(r));
            } else {
              ok = false;
            }
            virSecretFree(secrets[i]);
          }
          free(secrets);
          return ok;
        });
      },
      [out](Napi::Env env) {
        Napi::Array a = Napi::Array::New(env, out->size());
        for (size_t i = 0; i < out->size(); i++) a.Set(i, ToJs(env, (*out)[i]));
        return a;
      });
}

Napi::Value Connect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string uri = ArgString(info, 0, "uri");
  if (info.Length() < 2 || !info[1].IsObject()) throw Napi::TypeError::New(env, "options must be an object");
  Napi::Object opts = info[1].As<Napi::Object>();
  bool readOnly = opts.Get("readOnly").ToBoolean().Value();
  int keepAliveInterval = opts.Get("keepAliveIntervalS").IsNumber() ? opts.Get("keepAliveIntervalS").As<Napi::Number>().Int32Value() : 5;
  int keepAliveCount = opts.Get("keepAliveCount").IsNumber() ? opts.Get("keepAliveCount").As<Napi::Number>().Int32Value() : 3;
  if (info.Length() < 3 || !info[2].IsFunction()) throw Napi::TypeError::New(env, "onEvent must be a function");

  EnsureEventLoop(env);
  auto st = std::make_shared<ConnState>();
  st->gate = EventGate::Create(env, info[2].As<Napi::Function>());
  return Job::Start(
      env, "connect",
      [st, uri, readOnly, keepAliveInterval, keepAliveCount](Failure& f) {
        virConnectPtr c = readOnly ? virConnectOpenReadOnly(uri.c_str()) : virConnectOpen(uri.c_str());
        if (c == nullptr) {
          f = CaptureLibvirtError("virConnectOpen");
          st->gate->Close();
          return false;
        }
        // Without keepalive a libvirtd that died or hangs is only noticed by the next call.
        if (keepAliveInterval > 0 && virConnectSetKeepAlive(c, keepAliveInterval, static_cast<unsigned int>(keepAliveCount)) < 0) {
          f = CaptureLibvirtError("virConnectSetKeepAlive");
          virConnectClose(c);
          st->gate->Close();
          return false;
        }
        if (!RegisterEvents(c, st->gate, st->reg, f)) {
          virConnectClose(c);
          st->gate->Close();
          return false;
        }
        std::lock_guard<std::mutex> lock(st->mu);
        st->conn = c;
        return true;
      },
      [st](Napi::Env env) { return Connection::NewInstance(env, st); });
}

}  // namespace vmplug
