// libvirt events to JS. libvirt invokes callbacks on its event-loop thread (addon.cc); they copy
// what they need out of libvirt's objects and post it through a thread-safe function, so JS
// sees every event on its own thread, in order, without polling.
#pragma once

#include <libvirt/libvirt.h>
#include <napi.h>

#include <memory>
#include <mutex>
#include <string>

#include "job.h"

namespace vmplug {

struct EventData {
  enum class Kind { Lifecycle, DeviceRemoved, DeviceRemovalFailed, Closed };
  Kind kind;
  std::string name;
  std::string uuid;
  int id = -1;
  int event = 0;
  int detail = 0;
  std::string alias;
  int reason = 0;
};

void CallJs(Napi::Env env, Napi::Function callback, std::nullptr_t* context, EventData* data);
using EventTsfn = Napi::TypedThreadSafeFunction<std::nullptr_t, EventData, CallJs>;

// Owns the thread-safe function of one connection. Post() may run on any thread and never
// touches the function once it was closed here or finalized by Node (environment teardown),
// which is why both go through the same mutex.
class EventGate {
 public:
  static std::shared_ptr<EventGate> Create(Napi::Env env, Napi::Function callback);
  void Post(std::unique_ptr<EventData> data);
  // Releases the thread-safe function; idempotent, any thread.
  void Close();

 private:
  static void Finalize(Napi::Env env, std::shared_ptr<EventGate>* holder, std::nullptr_t* context);
  std::mutex mu_;
  bool open_ = false;
  EventTsfn tsfn_;
};

// Callback ids of one connection, so close can deregister exactly what connect registered.
struct Registration {
  int lifecycle = -1;
  int deviceRemoved = -1;
  int deviceRemovalFailed = -1;
  bool closeCallback = false;
};

// Registers libvirt's default event loop and starts the thread that runs it, once per process
// (libvirt allows one event implementation, and it must exist before a connection opens for
// keepalive and events to work). Throws on failure.
void EnsureEventLoop(Napi::Env env);

bool RegisterEvents(virConnectPtr conn, const std::shared_ptr<EventGate>& gate, Registration& reg,
                    Failure& failure);
// Best effort: on a connection that already died deregistration fails and there is nothing
// left to deregister from.
void DeregisterEvents(virConnectPtr conn, Registration& reg);

}  // namespace vmplug
