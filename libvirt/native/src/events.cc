#include "events.h"

#include <libvirt/virterror.h>

namespace vmplug {

namespace {

const char* KindName(EventData::Kind k) {
  switch (k) {
    case EventData::Kind::Lifecycle:
      return "lifecycle";
    case EventData::Kind::DeviceRemoved:
      return "deviceRemoved";
    case EventData::Kind::DeviceRemovalFailed:
      return "deviceRemovalFailed";
    case EventData::Kind::Closed:
      return "closed";
  }
  return "unknown";
}

using GateHolder = std::shared_ptr<EventGate>;

// Only local accessors here (name, UUID and id are cached in the domain object): an RPC from the
// event-loop thread would stall every other event.
std::unique_ptr<EventData> DomainEvent(EventData::Kind kind, virDomainPtr dom) {
  auto d = std::make_unique<EventData>();
  d->kind = kind;
  const char* name = virDomainGetName(dom);
  if (name != nullptr) d->name = name;
  char uuid[VIR_UUID_STRING_BUFLEN];
  if (virDomainGetUUIDString(dom, uuid) == 0) d->uuid = uuid;
  unsigned int id = virDomainGetID(dom);
  d->id = id == static_cast<unsigned int>(-1) ? -1 : static_cast<int>(id);
  return d;
}

int OnLifecycle(virConnectPtr, virDomainPtr dom, int event, int detail, void* opaque) {
  auto d = DomainEvent(EventData::Kind::Lifecycle, dom);
  d->event = event;
  d->detail = detail;
  (*static_cast<GateHolder*>(opaque))->Post(std::move(d));
  return 0;
}

void OnDeviceRemoved(virConnectPtr, virDomainPtr dom, const char* alias, void* opaque) {
  auto d = DomainEvent(EventData::Kind::DeviceRemoved, dom);
  if (alias != nullptr) d->alias = alias;
  (*static_cast<GateHolder*>(opaque))->Post(std::move(d));
}

void OnDeviceRemovalFailed(virConnectPtr, virDomainPtr dom, const char* alias, void* opaque) {
  auto d = DomainEvent(EventData::Kind::DeviceRemovalFailed, dom);
  if (alias != nullptr) d->alias = alias;
  (*static_cast<GateHolder*>(opaque))->Post(std::move(d));
}

void OnClose(virConnectPtr, int reason, void* opaque) {
  auto d = std::make_unique<EventData>();
  d->kind = EventData::Kind::Closed;
  d->reason = reason;
  (*static_cast<GateHolder*>(opaque))->Post(std::move(d));
}

// libvirt calls this once a callback is gone for good (possibly later, on its loop thread).
void FreeHolder(void* opaque) { delete static_cast<GateHolder*>(opaque); }

}  // namespace

void CallJs(Napi::Env env, Napi::Function callback, std::nullptr_t*, EventData* raw) {
  std::unique_ptr<EventData> d(raw);
  // env is null when Node tears the function down with events still queued.
  if (env == nullptr || callback.IsEmpty()) return;
  // Nothing may unwind into Node's thread-safe-function machinery: Napi calls throw while a
  // Worker's environment is torn down, and the TS wrapper's listener never throws.
  try {
    Napi::Object o = Napi::Object::New(env);
    o.Set("kind", Napi::String::New(env, KindName(d->kind)));
    if (d->kind == EventData::Kind::Closed) {
      o.Set("reason", Napi::Number::New(env, d->reason));
    } else {
      o.Set("name", Napi::String::New(env, d->name));
      o.Set("uuid", Napi::String::New(env, d->uuid));
      o.Set("id", Napi::Number::New(env, d->id));
      if (d->kind == EventData::Kind::Lifecycle) {
        o.Set("event", Napi::Number::New(env, d->event));
        o.Set("detail", Napi::Number::New(env, d->detail));
      } else {
        o.Set("alias", Napi::String::New(env, d->alias));
      }
    }
    callback.Call({o});
  } catch (...) {
  }
}

std::shared_ptr<EventGate> EventGate::Create(Napi::Env env, Napi::Function callback) {
  auto gate = std::make_shared<EventGate>();
  auto* holder = new GateHolder(gate);
  gate->tsfn_ = EventTsfn::New(env, callback, "vmplug.libvirt.events", 0, 1, nullptr,
                               &EventGate::Finalize, holder);
  // Events alone must not keep the process alive; open connections are closed explicitly.
  gate->tsfn_.Unref(env);
  gate->open_ = true;
  return gate;
}

void EventGate::Finalize(Napi::Env, GateHolder* holder, std::nullptr_t*) {
  {
    std::lock_guard<std::mutex> lock((*holder)->mu_);
    (*holder)->open_ = false;
  }
  delete holder;
}

void EventGate::Post(std::unique_ptr<EventData> data) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!open_) return;
  if (tsfn_.NonBlockingCall(data.get()) == napi_ok) data.release();
}

void EventGate::Close() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!open_) return;
  open_ = false;
  tsfn_.Release();
}

bool RegisterEvents(virConnectPtr conn, const std::shared_ptr<EventGate>& gate, Registration& reg,
                    Failure& failure) {
  auto reg1 = [&](int eventId, virConnectDomainEventGenericCallback cb, int& out) {
    auto* holder = new GateHolder(gate);
    out = virConnectDomainEventRegisterAny(conn, nullptr, eventId, cb, holder, FreeHolder);
    if (out < 0) {
      delete holder;
      failure = CaptureLibvirtError("virConnectDomainEventRegisterAny");
      return false;
    }
    return true;
  };
  if (!reg1(VIR_DOMAIN_EVENT_ID_LIFECYCLE, VIR_DOMAIN_EVENT_CALLBACK(OnLifecycle), reg.lifecycle) ||
      !reg1(VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, VIR_DOMAIN_EVENT_CALLBACK(OnDeviceRemoved),
            reg.deviceRemoved) ||
      !reg1(VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED, VIR_DOMAIN_EVENT_CALLBACK(OnDeviceRemovalFailed),
            reg.deviceRemovalFailed)) {
    DeregisterEvents(conn, reg);
    return false;
  }
  auto* holder = new GateHolder(gate);
  if (virConnectRegisterCloseCallback(conn, OnClose, holder, FreeHolder) < 0) {
    delete holder;
    failure = CaptureLibvirtError("virConnectRegisterCloseCallback");
    DeregisterEvents(conn, reg);
    return false;
  }
  reg.closeCallback = true;
  return true;
}

void DeregisterEvents(virConnectPtr conn, Registration& reg) {
  for (int* id : {&reg.lifecycle, &reg.deviceRemoved, &reg.deviceRemovalFailed}) {
    if (*id >= 0) virConnectDomainEventDeregisterAny(conn, *id);
    *id = -1;
  }
  if (reg.closeCallback) virConnectUnregisterCloseCallback(conn, OnClose);
  reg.closeCallback = false;
  virResetLastError();
}

}  // namespace vmplug
