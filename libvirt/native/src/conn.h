// A libvirt connection as a JS object. Every method returns a promise and runs libvirt on the
// thread pool (job.h). Domains and secrets are addressed by UUID string and looked up inside each
// call, so JS never holds a native domain or secret handle that could dangle.
#pragma once

#include <libvirt/libvirt.h>
#include <napi.h>

#include <memory>
#include <mutex>

#include "events.h"

namespace vmplug {

struct ConnState {
  std::mutex mu;
  virConnectPtr conn = nullptr;  // null once closed
  Registration reg;
  std::shared_ptr<EventGate> gate;

  // A reference for one call, so close() cannot free the connection under a running call;
  // nullptr (and `failure` filled) once closed. Release with virConnectClose.
  virConnectPtr Acquire(Failure& failure);
};

class Connection : public Napi::ObjectWrap<Connection> {
 public:
  static Napi::Function Define(Napi::Env env);
  static Napi::Object NewInstance(Napi::Env env, std::shared_ptr<ConnState> state);
  explicit Connection(const Napi::CallbackInfo& info);
  ~Connection() override;

 private:
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value IsAlive(const Napi::CallbackInfo& info);
  Napi::Value ListDomains(const Napi::CallbackInfo& info);
  Napi::Value LookupByName(const Napi::CallbackInfo& info);
  Napi::Value LookupByUUID(const Napi::CallbackInfo& info);
  Napi::Value GetXMLDesc(const Napi::CallbackInfo& info);
  Napi::Value GetState(const Napi::CallbackInfo& info);
  Napi::Value GetInfo(const Napi::CallbackInfo& info);
  Napi::Value AttachDeviceFlags(const Napi::CallbackInfo& info);
  Napi::Value DetachDeviceFlags(const Napi::CallbackInfo& info);
  Napi::Value DetachDeviceAlias(const Napi::CallbackInfo& info);
  Napi::Value SetVcpusFlags(const Napi::CallbackInfo& info);
  Napi::Value SetMemoryFlags(const Napi::CallbackInfo& info);
  Napi::Value BlockResize(const Napi::CallbackInfo& info);
  Napi::Value GetBlockInfo(const Napi::CallbackInfo& info);
  Napi::Value Suspend(const Napi::CallbackInfo& info);
  Napi::Value Resume(const Napi::CallbackInfo& info);
  Napi::Value Destroy(const Napi::CallbackInfo& info);
  Napi::Value SecretDefineXML(const Napi::CallbackInfo& info);
  Napi::Value SecretSetValue(const Napi::CallbackInfo& info);
  Napi::Value SecretUndefine(const Napi::CallbackInfo& info);
  Napi::Value SecretLookupByUUID(const Napi::CallbackInfo& info);
  Napi::Value SecretLookupByUsage(const Napi::CallbackInfo& info);
  Napi::Value ListSecrets(const Napi::CallbackInfo& info);

  std::shared_ptr<ConnState> state_;
};

// Opens a connection on the thread pool: keepalive, domain events and the close callback are set
// up before the promise resolves, so no event is missed between connect and subscribe.
Napi::Value Connect(const Napi::CallbackInfo& info);

}  // namespace vmplug
